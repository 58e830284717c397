{{/* Names, labels, images and the security contexts every pod of the chart shares. */}}

{{- define "corral.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object-name prefix; truncated so that "-operator" and "-gateway" still fit 63. */}}
{{- define "corral.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "corral.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object the chart renders. */}}
{{- define "corral.labels" -}}
helm.sh/chart: {{ include "corral.chart" . }}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: corral
{{- end }}

{{/*
Whether this release renders one CRD: include "corral.crds.install" (list . "models.corral.dev")
is "true" or empty. With crds.install, a CRD is the release's when it does not exist yet or
carries this release's ownership annotations (the release made it, or made it before an uninstall
kept it). A CRD that exists without them (applied from crds/ with kubectl, or another release's)
is left out: Helm refuses to install over an object it does not own, in a real install and in
`--dry-run=server` alike, and rendering it anyway would take it from its owner. `helm template`
and client-side dry runs look nothing up, so they render every CRD, as a fresh install does.
*/}}
{{- define "corral.crds.install" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.crds.install -}}
{{- $existing := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" (index . 1) -}}
{{- $owner := dig "metadata" "annotations" (dict) $existing -}}
{{- $release := get $owner "meta.helm.sh/release-name" -}}
{{- $namespace := get $owner "meta.helm.sh/release-namespace" -}}
{{- if or (not $existing) (and (eq $release $root.Release.Name) (eq $namespace $root.Release.Namespace)) -}}
true
{{- end -}}
{{- end -}}
{{- end }}

{{/* Selector labels of one component: include "corral.selectorLabels" (list . "gateway"). */}}
{{- define "corral.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "corral.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component's objects. */}}
{{- define "corral.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "corral.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "corral.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "corral.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "corral.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (printf "%s-gateway" (include "corral.fullname" .)) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: include "corral.imageRef" (list .Values.image .Chart.AppVersion). */}}
{{- define "corral.imageRef" -}}
{{- $image := index . 0 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default (index . 1) $image.tag) }}
{{- end }}
{{- end }}

{{/*
Pod Security "restricted": a fixed non-root identity, the runtime's default seccomp profile, no
privilege escalation, every capability dropped, a read-only root filesystem. The operator builds
runtime and Job pods with the same identity (65532).
*/}}
{{- define "corral.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "corral.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The cache profiles as the operator reads them (JSON): an empty storageClassName is left
out, since "" would turn dynamic provisioning off rather than pick the default class. */}}
{{- define "corral.cacheProfilesJson" -}}
{{- $profiles := dict }}
{{- range $name, $profile := .Values.cacheProfiles }}
{{- $entry := dict "size" $profile.size "accessMode" $profile.accessMode }}
{{- if $profile.storageClassName }}
{{- $_ := set $entry "storageClassName" $profile.storageClassName }}
{{- end }}
{{- $_ := set $profiles $name $entry }}
{{- end }}
{{- toJson $profiles }}
{{- end }}

{{/*
Where the RBAC rules of a component apply: a list of namespaces, or [""] for the whole cluster
(one ClusterRoleBinding). Used by the operator's and the gateway's rbac templates.
*/}}
{{- define "corral.rbacScopes" -}}
{{- if .Values.watchNamespaces }}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- else }}
{{- toJson (list "") }}
{{- end }}
{{- end }}

{{/*
One container environment variable, unless the component's extraEnv names it (an extra entry
replaces the chart's own instead of repeating the name, which API servers refuse or mis-track).
Arguments: (list NAME VALUE EXTRA_ENV).
*/}}
{{- define "corral.envVar" -}}
{{- $name := index . 0 }}
{{- $overridden := false }}
{{- range (index . 2) }}{{ if eq .name $name }}{{ $overridden = true }}{{ end }}{{ end }}
{{- if not $overridden -}}
- name: {{ $name }}
  value: {{ index . 1 | toString | quote }}
{{- end }}
{{- end }}
