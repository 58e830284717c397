"""The Model and ModelServer ``corral deploy`` applies, built purely from its arguments.

``corral deploy NAME -f Modelfile`` makes the Model of a Modelfile (read by the runtime's own
parser, so a Modelfile means the same locally and in the cluster): FROM is the source, the rest
becomes the spec's template, system, parameters, messages and license, and NAME the name the
model is served under.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral_operator import api
from corral_operator.cli.naming import client_model_name, resource_name
from corral_operator.sources import InvalidSourceError, parse_source
from corral_runtime.store.modelfile import Modelfile

# Ollama's parameter names (a Modelfile's) -> Model.spec.parameters fields.
_PARAMETER_FIELDS = {ollama: field for field, ollama in api.PARAMETER_NAMES.items()}


@dataclass(frozen=True, slots=True)
class DeployRequest:
    model: str
    """As typed: ``gemma3:270m``, ``ollama://…``, ``hf://…``, ``https://…``, ``pvc://…``."""
    gpus: int | None = None
    """None: the operator sizes the server from its model (GPUs where nodes say their memory)."""
    min_replicas: int = 0
    max_replicas: int = 1
    keep_alive_seconds: int = 300
    max_keep_alive_seconds: int = 3600
    """How long a request's keep_alive may keep the server up; -1: no bound."""
    cpu: str | None = None
    memory: str | None = None
    modelfile: Modelfile | None = None
    """With ``-f``: the Modelfile, and ``model`` is the name it is served under."""
    modelfile_is_local: bool = False
    """Whether the Modelfile's FROM names a file on this machine (the cluster cannot read it)."""

    def problems(self) -> list[str]:
        found = []
        if self.min_replicas > self.max_replicas:
            found.append(f"--min ({self.min_replicas}) is greater than --max ({self.max_replicas})")
        if self.max_replicas < 1:
            found.append("--max must be at least 1")
        negative_gpus = self.gpus is not None and self.gpus < 0
        if self.min_replicas < 0 or negative_gpus or self.keep_alive_seconds < 0:
            found.append("--min, --gpus and --keep-alive cannot be negative")
        return found


def model_object(request: DeployRequest, namespace: str) -> dict[str, Any]:
    """Every field is stated, so that re-running deploy with other flags (or an edited
    Modelfile) converges on them: a field no longer given is removed by the apply."""
    if request.modelfile is not None:
        spec = modelfile_spec(request.model, request.modelfile, request.modelfile_is_local)
    else:
        spec = {"source": parse_source(request.model).uri}
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Model",
        "metadata": {"name": resource_name(request.model), "namespace": namespace},
        "spec": spec,
    }


def modelfile_source(base: str, is_local_file: bool) -> str:
    """A Modelfile's FROM as a ``spec.source`` the cluster can pull: a library name, ollama://,
    hf://, https:// or pvc://. A file on this machine (or what can only be one: a .gguf name
    without a scheme) is refused with what to do instead, since no pull Job can read it."""
    if is_local_file or ("://" not in base and base.lower().endswith(".gguf")):
        raise InvalidSourceError(
            f"FROM {base} is a file on this machine, which the cluster cannot read: upload it "
            "where the cluster can pull it (hf://org/repo/file.gguf, https://…/file.gguf) or "
            "copy it to a PersistentVolumeClaim and use FROM pvc://claim/path/file.gguf"
        )
    try:
        return parse_source(base).uri
    except InvalidSourceError as exc:
        raise InvalidSourceError(f"FROM {base}: {exc}") from None


def modelfile_spec(name: str, modelfile: Modelfile, is_local_file: bool) -> dict[str, Any]:
    """The Model spec that says what ``modelfile`` says, served as ``name``."""
    if "://" in name:
        raise InvalidSourceError(
            f"NAME {name} must be a model name (e.g. pirate or pirate:v1): with -f, the "
            "source is the Modelfile's FROM"
        )
    spec: dict[str, Any] = {
        "source": modelfile_source(modelfile.base, is_local_file),
        "name": client_model_name(name),
    }
    if modelfile.template is not None:
        spec["template"] = modelfile.template
    if modelfile.system is not None:
        spec["system"] = modelfile.system
    if modelfile.parameters:
        spec["parameters"] = {
            _PARAMETER_FIELDS[key]: value for key, value in modelfile.parameters.items()
        }
    if modelfile.messages:
        spec["messages"] = [dict(message) for message in modelfile.messages]
    if modelfile.license is not None:
        spec["license"] = modelfile.license
    return spec


def server_object(request: DeployRequest, namespace: str) -> dict[str, Any]:
    name = resource_name(request.model)
    resources: dict[str, Any] = {} if request.gpus is None else {"gpus": request.gpus}
    if request.cpu is not None:
        resources["cpu"] = request.cpu
    if request.memory is not None:
        resources["memory"] = request.memory
    return {
        "apiVersion": api.API_VERSION,
        "kind": "ModelServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "models": [name],
            "minReplicas": request.min_replicas,
            "maxReplicas": request.max_replicas,
            "keepAliveSeconds": request.keep_alive_seconds,
            "maxKeepAliveSeconds": request.max_keep_alive_seconds,
            "resources": resources,
        },
    }
