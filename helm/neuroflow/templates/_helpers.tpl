{{/* Names and labels. Every object carries the standard labels; a component label tells the services apart. */}}
{{- define "neuroflow.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "neuroflow.labels" -}}
app.kubernetes.io/name: neuroflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: neuroflow
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
neuroflow/tier: {{ .Values.tier }}
{{- if eq .Values.tier "site" }}
neuroflow/site: {{ .Values.site.name | quote }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: "neuroflow.selector" (dict "root" $ "component" "orchestrator") */}}
{{- define "neuroflow.selector" -}}
app.kubernetes.io/name: neuroflow
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "neuroflow.componentLabels" -}}
{{ include "neuroflow.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "neuroflow.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{- /* Where every neuroflow pod finds the site's CA bundle (certificates.existingSecret, key caKey). */}}
{{- define "neuroflow.caFile" -}}/etc/neuroflow/tls/ca.crt{{- end }}

{{- /* The metrics port's login and certificate (values metricsAccess): environment entries of a service. */}}
{{- define "neuroflow.metricsAccessEnv" -}}
{{- $m := .Values.metricsAccess -}}
- name: NEUROFLOW_METRICS_ACCESS__USERNAME
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.existingSecret }}, key: {{ $m.usernameKey }}}
- name: NEUROFLOW_METRICS_ACCESS__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.existingSecret }}, key: {{ $m.passwordKey }}}
{{- if $m.tls }}
- {name: NEUROFLOW_METRICS_ACCESS__CERT_FILE, value: {{ include "neuroflow.caFile" . | dir }}/metrics.crt}
- {name: NEUROFLOW_METRICS_ACCESS__KEY_FILE, value: {{ include "neuroflow.caFile" . | dir }}/metrics.key}
{{- end }}
{{- end -}}

{{- /* The site-ca volume: the CA bundle, and with metricsAccess.tls the metrics port's certificate and key
(group-readable only: the pod's fsGroup). */}}
{{- define "neuroflow.siteCaVolume" -}}
- name: site-ca
  secret:
    secretName: {{ .Values.certificates.existingSecret }}
    defaultMode: 0440
    items:
      - {key: {{ .Values.certificates.caKey }}, path: {{ include "neuroflow.caFile" . | base }}}
      {{- if .Values.metricsAccess.tls }}
      - {key: {{ .Values.metricsAccess.certKey }}, path: metrics.crt}
      - {key: {{ .Values.metricsAccess.keyKey }}, path: metrics.key}
      {{- end }}
{{- end -}}

{{- /* The scheme of the probes on the metrics port. */}}
{{- define "neuroflow.metricsScheme" -}}{{ if .Values.metricsAccess.tls }}HTTPS{{ else }}HTTP{{ end }}{{- end -}}

{{- define "neuroflow.orthancHost" -}}
{{- printf "%s-orthanc" (include "neuroflow.fullname" .) -}}
{{- end -}}

{{/*
The networks allowed to reach the site Orthanc's DICOM port, as a JSON list of CIDRs: orthanc.dicomClients
(scanners, PACS) and site.priorPacs's host, which answers our C-MOVEs by opening C-STOREs to us. The
NetworkPolicy and the external DICOM Service (loadBalancerSourceRanges) both use this one list.
*/}}
{{- define "neuroflow.dicomSources" -}}
{{- $sources := list }}
{{- range .Values.orthanc.dicomClients }}{{ $sources = append $sources .cidr }}{{ end }}
{{- with .Values.site.priorPacs }}{{ $sources = append $sources (printf "%s/32" .host) }}{{ end }}
{{- $sources | uniq | toJson }}
{{- end -}}

{{/* Paths inside the pods: the site's shared storage and the configuration files. */}}
{{- define "neuroflow.dataRoot" -}}/var/lib/neuroflow/shared{{- end -}}
{{- define "neuroflow.configRoot" -}}/etc/neuroflow{{- end -}}

{{/*
Kafka topics and consumer groups (allTopics; workers.<stage>.taskTopics[].{topic, consumerGroup}), generated
from services/neuroflow/core/topics.py into files/topics.yaml by scripts/gen_chart_topics.py: the chart never
spells a name the code does not use. Templates read it with include "neuroflow.kafkaNames" . | fromYaml.
*/}}
{{- define "neuroflow.kafkaNames" -}}
{{- .Files.Get "files/topics.yaml" -}}
{{- end -}}

{{/* The security context of every container: non-root, no privilege escalation, no capabilities. */}}
{{- define "neuroflow.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .readOnlyRootFilesystem }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The NEUROFLOW_* environment every neuroflow service of a site shares (the ConfigMap "<release>-env").
Each name is a field of NeuroflowSettings (services/neuroflow/core/config.py; prefix NEUROFLOW_, nested
delimiter __), checked by the tests. Credentials are not here: they come from the site's Secret.
*/}}
{{- define "neuroflow.settingsEnv" -}}
{{- $s := .Values.site -}}
NEUROFLOW_SITE: {{ $s.name | quote }}
NEUROFLOW_BUS__KIND: "kafka"
NEUROFLOW_BUS__BOOTSTRAP: {{ .Values.kafka.bootstrap | quote }}
{{- include "neuroflow.kafkaSecurityEnv" . }}
NEUROFLOW_STATE__KIND: "postgres"
NEUROFLOW_DICOM__SOURCE: "orthanc"
NEUROFLOW_DICOM__ORTHANC_URL: {{ printf "https://%s:%d" (include "neuroflow.orthancHost" .) (int .Values.orthanc.httpPort) | quote }}
NEUROFLOW_DICOM__ORTHANC_CA_FILE: {{ include "neuroflow.caFile" . | quote }}
NEUROFLOW_STATE__SSLMODE: {{ .Values.postgresql.sslmode | quote }}
NEUROFLOW_STATE__SSLROOTCERT: {{ include "neuroflow.caFile" . | quote }}
NEUROFLOW_DICOM__DESTINATION: {{ $s.destination | quote }}
{{- if $s.routingRules }}
NEUROFLOW_SITE_RULES: {{ printf "%s/site-rules.yaml" (include "neuroflow.configRoot" .) | quote }}
{{- end }}
NEUROFLOW_VOLUME_STORE_ROOT: {{ printf "%s/volumes" (include "neuroflow.dataRoot" .) | quote }}
NEUROFLOW_RECORDS_ROOT: {{ printf "%s/records" (include "neuroflow.dataRoot" .) | quote }}
NEUROFLOW_REPORTS_DIR: {{ printf "%s/reports" (include "neuroflow.dataRoot" .) | quote }}
NEUROFLOW_CONSOLE__TRAINING_DIR: {{ printf "%s/training" (include "neuroflow.dataRoot" .) | quote }}
NEUROFLOW_INGEST__WAIT_WINDOW_S: {{ $s.waitWindowS | quote }}
NEUROFLOW_INGEST__PIPELINES: {{ $s.pipelines | toJson | quote }}
{{- range $role, $model := $s.models }}
{{- if $model }}
NEUROFLOW_MODELS__{{ $role | upper }}: {{ $model | toJson | quote }}
{{- end }}
{{- end }}
NEUROFLOW_MONITOR__END_TO_END_TARGET_S: {{ $s.endToEndTargetS | quote }}
NEUROFLOW_MONITOR__STORAGE_SENTINEL: {{ .Values.sharedStorage.sentinel | quote }}
NEUROFLOW_MONITOR__MIN_FREE_BYTES: {{ printf "%d" (int64 .Values.orthanc.minFreeBytes) | quote }}
{{- with $s.priorPacs }}
NEUROFLOW_LONGITUDINAL__PACS: {{ . | toJson | quote }}
{{- end }}
{{- /* onnxruntime in the worker pod is the code's default: only the Triton backend is named. */}}
{{- if eq .Values.inference.backend "triton" }}
NEUROFLOW_INFERENCE__BACKEND: "triton"
NEUROFLOW_INFERENCE__TRITON_URL: {{ .Values.inference.tritonUrl | quote }}
NEUROFLOW_INFERENCE__TRITON_TLS: "true"
NEUROFLOW_INFERENCE__TRITON_CA_FILE: {{ include "neuroflow.tritonTlsRoot" . }}/ca.crt
NEUROFLOW_INFERENCE__TRITON_CERT_FILE: {{ include "neuroflow.tritonTlsRoot" . }}/tls.crt
NEUROFLOW_INFERENCE__TRITON_KEY_FILE: {{ include "neuroflow.tritonTlsRoot" . }}/tls.key
{{- with .Values.inference.tritonTls.serverName }}
NEUROFLOW_INFERENCE__TRITON_SERVER_NAME: {{ . | quote }}
{{- end }}
NEUROFLOW_INFERENCE__SHARED_TIER_SKULL_STRIPPED_ONLY: {{ .Values.inference.sharedTierSkullStrippedOnly | quote }}
{{- end }}
NEUROFLOW_METRICS_HOST: "0.0.0.0"
NEUROFLOW_METRICS_PORT: {{ .Values.metricsPort | quote }}
{{- range $name, $value := $s.extraSettings }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}


{{/*
Kafka security (values kafka.security; README "Kafka security"). The same files in every pod: the CA that
signed the brokers' certificates, and the service's own credentials (password, or certificate and key),
each mounted from a Secret; only the username differs per service (neuroflow.kafkaUsername).
*/}}
{{- define "neuroflow.kafkaMountRoot" -}}/etc/neuroflow-kafka{{- end -}}

{{- define "neuroflow.kafkaSecurityEnv" -}}
{{- $k := .Values.kafka.security }}
{{- if ne $k.protocol "PLAINTEXT" }}
NEUROFLOW_BUS__SECURITY_PROTOCOL: {{ $k.protocol | quote }}
NEUROFLOW_BUS__CA_FILE: {{ printf "%s/ca/ca.crt" (include "neuroflow.kafkaMountRoot" .) | quote }}
{{- if eq $k.protocol "SASL_SSL" }}
NEUROFLOW_BUS__SASL_MECHANISM: {{ $k.saslMechanism | quote }}
NEUROFLOW_BUS__PASSWORD_FILE: {{ printf "%s/user/password" (include "neuroflow.kafkaMountRoot" .) | quote }}
{{- else }}
NEUROFLOW_BUS__CERT_FILE: {{ printf "%s/user/user.crt" (include "neuroflow.kafkaMountRoot" .) | quote }}
NEUROFLOW_BUS__KEY_FILE: {{ printf "%s/user/user.key" (include "neuroflow.kafkaMountRoot" .) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Kafka user of a service: (dict "root" $ "service" name). */}}
{{- define "neuroflow.kafkaUsername" -}}
{{- $prefix := .root.Values.kafka.security.usernamePrefix | default (printf "%s-" (include "neuroflow.fullname" .root)) -}}
{{- printf "%s%s" $prefix .service -}}
{{- end -}}

{{/* The Secret with a service's Kafka credentials: (dict "root" $ "service" name). */}}
{{- define "neuroflow.kafkaUserSecret" -}}
{{- with .root.Values.kafka.security.userSecretPrefix -}}
{{- printf "%s%s" . $.service -}}
{{- else -}}
{{- include "neuroflow.kafkaUsername" . -}}
{{- end -}}
{{- end -}}

{{/* The container's Kafka volume mounts and the pod's volumes: (dict "root" $ "service" name). */}}
{{- define "neuroflow.kafkaVolumeMounts" -}}
{{- if ne .root.Values.kafka.security.protocol "PLAINTEXT" }}
- name: kafka-ca
  mountPath: {{ include "neuroflow.kafkaMountRoot" .root }}/ca
  readOnly: true
- name: kafka-user
  mountPath: {{ include "neuroflow.kafkaMountRoot" .root }}/user
  readOnly: true
{{- end }}
{{- end -}}

{{- define "neuroflow.kafkaVolumes" -}}
{{- $k := .root.Values.kafka.security }}
{{- if ne $k.protocol "PLAINTEXT" }}
- name: kafka-ca
  secret:
    secretName: {{ $k.caSecret }}
    items: [{key: {{ $k.caKey }}, path: ca.crt}]
- name: kafka-user
  secret:
    secretName: {{ include "neuroflow.kafkaUserSecret" . }}
    # Owner root, group fsGroup (the service's): readable by the service, by no one else.
    defaultMode: 0440
    {{- if eq $k.protocol "SASL_SSL" }}
    items: [{key: password, path: password}]
    {{- else }}
    items: [{key: user.crt, path: user.crt}, {key: user.key, path: user.key}]
    {{- end }}
{{- end }}
{{- end -}}

{{/* Where a site's services find the certificates they reach Triton with (inference.tritonTls). */}}
{{- define "neuroflow.tritonTlsRoot" -}}
/etc/neuroflow/triton-tls
{{- end -}}
