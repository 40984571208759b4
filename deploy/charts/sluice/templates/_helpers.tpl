{{/* The sluice image every component runs. */}}
{{- define "sluice.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The webhook's configuration: values.webhook.config, with controllerURL
defaulting to this release's controller. */}}
{{- define "sluice.webhookConfig" -}}
{{- $cfg := deepCopy (default (dict) .Values.webhook.config) -}}
{{- if not (hasKey $cfg "controllerURL") -}}
{{- $_ := set $cfg "controllerURL" (printf "https://sluice-controller.%s.svc:8090" .Release.Namespace) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
