"""Operator start-up: kopf's settings (corral's own finalizer and annotation prefixes) and the
API client the handlers share."""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from corral_operator.handlers.context import Context
from corral_operator.kube import Kube
from corral_operator.settings import KubeClientSettings, OperatorSettings


def uses_service_account(kube: KubeClientSettings) -> bool:
    """Whether the operator logs in with its pod's service account: in a pod and told of no
    kubeconfig (an empty KUBECONFIG tells of none). Outside a pod, or with KUBECONFIG set (a
    developer's operator pointed at another cluster), the kubeconfig decides."""
    return kube.in_pod and not kube.kubeconfig


def api_client(kube: KubeClientSettings) -> k8s.ApiClient:
    """A client for the cluster: in-cluster credentials in a pod, else the kubeconfig (its
    default file when KUBECONFIG is unset)."""
    if uses_service_account(kube):
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
        return k8s.ApiClient()
    client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kube.kubeconfig
    )
    return cast(k8s.ApiClient, client)


def configure(kopf_settings: Any, operator_settings: OperatorSettings) -> None:
    """Point kopf's bookkeeping at corral's own names, so it never collides with another kopf
    operator on the same objects."""
    prefix = operator_settings.annotation_prefix
    kopf_settings.persistence.finalizer = operator_settings.finalizer
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    # Handlers are synchronous API calls; enough threads to reconcile many objects at once.
    # The Events kubectl describe shows are the handlers' own (handlers.events); of kopf's log
    # lines only warnings and errors (a handler that failed) may become Events, never an INFO
    # line per handler run or applied child.
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.execution.max_workers = 32
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330


def start(kopf_settings: Any, memo: Any, operator_settings: OperatorSettings) -> Context:
    """Configure kopf and keep the handlers' context in ``memo``; the settings are the ones the
    entry point read once (its timers' intervals came from them already)."""
    configure(kopf_settings, operator_settings)
    context = Context(
        kube=Kube(api_client(operator_settings.kube_client)), settings=operator_settings
    )
    memo.context = context
    return context
