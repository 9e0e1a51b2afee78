{{/*
KUBELOOP_NOTIFICATIONS (JSON) from .Values.notifications (operator/kubeloop/notifications/settings.py).
A sink's urlSecret is mounted at /etc/kubeloop/notifications/<sink>/url and named by urlFile:
the URL (a credential for incoming webhooks) never appears in the pod spec.
*/}}
{{- define "kubeloop.notificationsConfig" -}}
{{- $n := .Values.notifications -}}
{{- $sinks := dict -}}
{{- range $name, $sink := ($n.sinks | default dict) -}}
{{- $out := dict "type" $sink.type -}}
{{- if $sink.mode -}}{{- $_ := set $out "mode" $sink.mode -}}{{- end -}}
{{- if $sink.urlSecret -}}
{{- $_ := set $out "urlFile" (printf "/etc/kubeloop/notifications/%s/url" $name) -}}
{{- else -}}
{{- $_ := set $out "url" ($sink.url | default "") -}}
{{- end -}}
{{- $_ := set $sinks $name $out -}}
{{- end -}}
{{- $config := dict "sinks" $sinks "subscriptions" ($n.subscriptions | default dict) "source" ($n.source | default "") -}}
{{- range $key := list "queueSize" "maxAttempts" "backoffSeconds" "maxBackoffSeconds" "timeoutSeconds" -}}
{{- if hasKey $n $key -}}{{- $_ := set $config $key (index $n $key) -}}{{- end -}}
{{- end -}}
{{- toJson $config -}}
{{- end -}}

{{- define "kubeloop.notificationsVolumeMounts" -}}
{{- range $name, $sink := (.Values.notifications.sinks | default dict) }}
{{- if $sink.urlSecret }}
- name: notify-{{ $name }}
  mountPath: /etc/kubeloop/notifications/{{ $name }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "kubeloop.notificationsVolumes" -}}
{{- range $name, $sink := (.Values.notifications.sinks | default dict) }}
{{- if $sink.urlSecret }}
- name: notify-{{ $name }}
  secret:
    secretName: {{ $sink.urlSecret.name }}
    items:
      - key: {{ $sink.urlSecret.key }}
        path: url
{{- end }}
{{- end }}
{{- end -}}
