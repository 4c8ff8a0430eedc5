{{/* The release's name for objects, at most 63 characters. */}}
{{- define "pollinate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pollinate.hubName" -}}
{{- printf "%s-hub" (include "pollinate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pollinate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pollinate.hubSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hub
{{- end -}}

{{- define "pollinate.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.registry -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where nodes dial the hub: the value given, or this release's hub Service. */}}
{{- define "pollinate.hubAddress" -}}
{{- if .Values.nodes.hub.address -}}
{{- .Values.nodes.hub.address -}}
{{- else -}}
{{- printf "%s.%s.svc:%v" (include "pollinate.hubName" .) .Release.Namespace .Values.hub.port -}}
{{- end -}}
{{- end -}}

{{/* The GPUs a pool's resources ask for (nvidia.com/gpu, limits first), or "". */}}
{{- define "pollinate.gpus" -}}
{{- $limits := (.resources | default dict).limits | default dict -}}
{{- $requests := (.resources | default dict).requests | default dict -}}
{{- index $limits "nvidia.com/gpu" | default (index $requests "nvidia.com/gpu") | default "" -}}
{{- end -}}
