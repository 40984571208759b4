{{/* The sluice image every component runs. */}}
{{- define "sluice.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The webhook's configuration: values.webhook.config, with controllerURL
defaulting to this release's controller and sidecar.image to the chart's
image. */}}
{{- define "sluice.webhookConfig" -}}
{{- $cfg := deepCopy (default (dict) .Values.webhook.config) -}}
{{- if not (hasKey $cfg "controllerURL") -}}
{{- $_ := set $cfg "controllerURL" (printf "https://sluice-controller.%s.svc:8090" .Release.Namespace) -}}
{{- end -}}
{{- $sidecar := default (dict) (get $cfg "sidecar") -}}
{{- if not (hasKey $sidecar "image") -}}
{{- $_ := set $sidecar "image" (include "sluice.image" .) -}}
{{- end -}}
{{- $_ := set $cfg "sidecar" $sidecar -}}
{{- toYaml $cfg -}}
{{- end -}}
