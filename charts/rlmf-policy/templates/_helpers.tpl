{{/* Names and labels: the same as the rlmf chart's, so the InferenceService keeps the name
<release>-rlmf-policy (or <release>-policy) whichever chart renders it. Install this chart under
the rlmf release's name, in the policy namespace. */}}

{{- define "rlmf.fullname" -}}
{{- if contains "rlmf" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-rlmf" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rlmf.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: rlmf
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: rlmf
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "rlmf.image" -}}
{{- $override := index .root.Values.image.overrides .service | default "" -}}
{{- if $override -}}
{{- $override -}}
{{- else -}}
{{- printf "%s/rlmf-%s:%s" .root.Values.image.registry .service (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The models claim in this namespace: the rlmf chart creates it under the same name as the
trainer's (models.policyVolume), or the admin does (docs/cluster.md). */}}
{{- define "rlmf.modelsClaim" -}}
{{- if .Values.models.create -}}
{{- printf "%s-models" (include "rlmf.fullname" .) -}}
{{- else -}}
{{- required "models.existingClaim is required when models.create=false" .Values.models.existingClaim -}}
{{- end -}}
{{- end -}}

{{- define "rlmf.resources" -}}
{{- $res := deepCopy .spec.resources -}}
{{- if and .spec.gpu .spec.gpu.enabled -}}
{{- $limits := default (dict) $res.limits -}}
{{- $_ := set $limits .spec.gpu.resourceName (.spec.gpu.count | toString) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}
