{{/* Names, labels and the pieces every conveyor pod shares. */}}

{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; components append -api, -worker... so keep room for them. */}}
{{- define "conveyor.fullname" -}}
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

{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" . }}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of one component: include "conveyor.componentLabels" (list . "api") */}}
{{- define "conveyor.componentLabels" -}}
{{ include "conveyor.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "conveyor.componentSelectorLabels" -}}
{{ include "conveyor.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "conveyor.secretName" -}}
{{- default (include "conveyor.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "conveyor.filesClaimName" -}}
{{- default (printf "%s-files" (include "conveyor.fullname" .)) .Values.files.persistence.existingClaim }}
{{- end }}

{{/* repository:tag, from an override map (worker.image) over the chart's image. */}}
{{- define "conveyor.image" -}}
{{- $root := index . 0 }}
{{- $override := index . 1 | default dict }}
{{- $repository := $override.repository | default $root.Values.image.repository }}
{{- $tag := $override.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* Settings from the ConfigMap, secrets from the Secret: the same for every role. */}}
{{- define "conveyor.envFrom" -}}
- configMapRef:
    name: {{ include "conveyor.fullname" . }}
- secretRef:
    name: {{ include "conveyor.secretName" . }}
{{- end }}

{{/* Restarts pods when their settings change (Secret included, unless it is external).
The Secret's checksum is of what the values put in it: rendering secret.yaml again would
generate other keys (randAlphaNum) on install, and read the kept ones on upgrade, so every
pod, GPU workers included, restarted on the first upgrade with nothing changed. Generated
keys are kept across upgrades, so they change nothing here. */}}
{{- define "conveyor.configChecksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.auth.existingSecret }}
checksum/secret: {{ list (tpl .Values.externalRedis.url .) (tpl .Values.externalDatabase.url .) .Values.auth.adminKey .Values.auth.serviceKey | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/* The pod-level settings every role shares. */}}
{{- define "conveyor.podCommon" -}}
serviceAccountName: {{ include "conveyor.serviceAccountName" . }}
# conveyor never calls the Kubernetes API.
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* The files volume (shared by the API and the batch workers) and a writable /tmp. */}}
{{- define "conveyor.filesVolume" -}}
- name: files
{{- if .Values.files.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "conveyor.filesClaimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{/* Every engine worker Deployment: `worker`, then each `extraWorkers` entry over it.
An entry's maps merge into `worker`'s key by key (startupProbe: {failureThreshold: 360}
keeps the probe's command), except where the machine differs: resources, nodeSelector,
affinity, podAnnotations and poolerConfig are replaced whole (a CPU embedding worker
must not inherit a GPU limit); lists are always replaced. A key `worker` lacks is
refused, so a typo cannot pass silently. YAML {workers: [{component, spec}]}, for
templates to range over; component "worker-NAME" keeps each one's selector its own. */}}
{{- define "conveyor.workers" -}}
{{- $workers := list (dict "component" "worker" "spec" .Values.worker) }}
{{- $wholes := list "resources" "nodeSelector" "affinity" "podAnnotations" "poolerConfig" }}
{{- range .Values.extraWorkers }}
{{- $spec := deepCopy $.Values.worker }}
{{- $entry := . }}
{{- range $key, $value := omit $entry "name" }}
{{- if not (hasKey $.Values.worker $key) }}
{{- fail (printf "extraWorkers %s: unknown key %q (the keys are worker's)" $entry.name $key) }}
{{- end }}
{{- $base := index $spec $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $base) (not (has $key $wholes)) }}
{{- $_ := set $spec $key (mergeOverwrite $base $value) }}
{{- else }}
{{- $_ := set $spec $key $value }}
{{- end }}
{{- end }}
{{- $workers = append $workers (dict "component" (printf "worker-%s" .name) "spec" $spec) }}
{{- end }}
{{- toYaml (dict "workers" $workers) }}
{{- end }}
