{{/*
Names. The full name is cut at 52 characters, not 63: a StatefulSet's controller-revision-hash
label is "<name>-<10 characters>" and must fit in 63.
*/}}
{{- define "cordon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "cordon.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cordon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "cordon.labels" -}}
helm.sh/chart: {{ include "cordon.chart" . }}
{{ include "cordon.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cordon
{{- end }}

{{/* Selector labels: immutable in a StatefulSet, so they never change between chart versions. */}}
{{- define "cordon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cordon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cordon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cordon.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cordon.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The container port: the port of config.http.listen ("0.0.0.0:9464", "[::]:9464"). */}}
{{- define "cordon.httpPort" -}}
{{- splitList ":" .Values.config.http.listen | last | atoi }}
{{- end }}

{{/* Fixed paths inside the container. */}}
{{- define "cordon.configPath" -}}/etc/cordon/cordon.yaml{{- end }}
{{- define "cordon.rulesDir" -}}/etc/cordon/rules{{- end }}
{{- define "cordon.stateDir" -}}/var/lib/cordon{{- end }}
{{- define "cordon.tlsDir" -}}/etc/cordon/tls{{- end }}

{{/* The ConfigMap whose rules are mounted at the rules directory; empty: the image's own pack. */}}
{{- define "cordon.rulesConfigMap" -}}
{{- if and .Values.rules.existingConfigMap .Values.rules.files }}
{{- fail "set either rules.files or rules.existingConfigMap, not both" }}
{{- end }}
{{- if .Values.rules.existingConfigMap }}
{{- .Values.rules.existingConfigMap }}
{{- else if .Values.rules.files }}
{{- printf "%s-rules" (include "cordon.fullname" .) }}
{{- end }}
{{- end }}

{{/* "true" when a TLS CA is configured (from a Secret or a ConfigMap). */}}
{{- define "cordon.tlsCa" -}}
{{- $ca := .Values.kafka.tls.ca }}
{{- if and $ca.secretName $ca.configMapName }}
{{- fail "set either kafka.tls.ca.secretName or kafka.tls.ca.configMapName, not both" }}
{{- end }}
{{- if or $ca.secretName $ca.configMapName }}true{{ end }}
{{- end }}

{{/*
A librdkafka property value as the string the engine expects. Helm reads every number as a
float64, which would print 1000000 as "1e+06"; whole numbers are printed as integers.
*/}}
{{- define "cordon.propertyValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
librdkafka properties, all values as strings; secrets are refused (they would land in a
ConfigMap). Arguments: (list "config.source.properties" $map).
*/}}
{{- define "cordon.properties" -}}
{{- $where := index . 0 }}
{{- $out := dict }}
{{- range $k, $v := (index . 1 | default dict) }}
{{- if regexMatch "(password|secret)$|^ssl[.]key[.]pem$" $k }}
{{- $section := index (splitList "." $where) 1 | upper }}
{{- fail (printf "%s.%s would put a secret into a ConfigMap: use kafka.sasl.existingSecret, or extraEnv with a secretKeyRef (CORDON_%s__PROPERTIES__%s)" $where $k $section (upper (replace "." "_" $k))) }}
{{- end }}
{{- $_ := set $out $k (include "cordon.propertyValue" $v) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The engine's config file (Config v1): .Values.config with the paths the chart mounts
(rules.paths, state.dir) and the Kafka security settings of .Values.kafka.
*/}}
{{- define "cordon.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $source := $cfg.source }}
{{- $_ := required "config.source.brokers is required: the Kafka bootstrap servers, host:port[,host:port]" $source.brokers }}
{{- $props := include "cordon.properties" (list "config.source.properties" $source.properties) | fromJson }}
{{- $kafka := .Values.kafka }}
{{- $derived := dict }}
{{- with $kafka.securityProtocol }}{{ $_ := set $derived "security.protocol" . }}{{ end }}
{{- with $kafka.sasl.mechanism }}{{ $_ := set $derived "sasl.mechanism" . }}{{ end }}
{{- if include "cordon.tlsCa" . }}
{{- $_ := set $derived "ssl.ca.location" (printf "%s/%s" (include "cordon.tlsDir" .) $kafka.tls.ca.key) }}
{{- end }}
{{- if $kafka.sasl.existingSecret }}
{{- range $k := list "sasl.username" "sasl.password" }}
{{- if hasKey $props $k }}{{ fail (printf "config.source.properties.%s is set and so is kafka.sasl.existingSecret; keep the credentials in the Secret" $k) }}{{ end }}
{{- end }}
{{- end }}
{{- range $k, $v := $derived }}
{{- if hasKey $props $k }}
{{- fail (printf "config.source.properties.%s is also set by the kafka section of the values; set it in one place" $k) }}
{{- end }}
{{- $_ := set $props $k $v }}
{{- end }}
{{- $protocol := get $props "security.protocol" | default "PLAINTEXT" | upper }}
{{- if and $kafka.sasl.existingSecret (not (hasPrefix "SASL_" $protocol)) }}
{{- fail (printf "kafka.sasl.existingSecret needs a SASL security protocol (kafka.securityProtocol: SASL_SSL or SASL_PLAINTEXT), not %s" $protocol) }}
{{- end }}
{{- if and $kafka.sasl.existingSecret (not (get $props "sasl.mechanism")) }}
{{- fail "kafka.sasl.existingSecret needs kafka.sasl.mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" }}
{{- end }}
{{- if and (include "cordon.tlsCa" .) (not (has $protocol (list "SSL" "SASL_SSL"))) }}
{{- fail (printf "kafka.tls.ca needs a TLS security protocol (kafka.securityProtocol: SSL or SASL_SSL), not %s" $protocol) }}
{{- end }}
{{- $_ := set $source "properties" $props }}
{{- $sink := $cfg.sink | default dict }}
{{- $_ := set $sink "properties" (include "cordon.properties" (list "config.sink.properties" $sink.properties) | fromJson) }}
{{- $_ := set $cfg "sink" $sink }}
{{- $_ := set $cfg "rules" (dict "paths" (list (include "cordon.rulesDir" .))) }}
{{- $state := $cfg.state | default dict }}
{{- $_ := set $state "dir" (include "cordon.stateDir" .) }}
{{- $_ := set $cfg "state" $state }}
{{- toYaml $cfg }}
{{- end }}
