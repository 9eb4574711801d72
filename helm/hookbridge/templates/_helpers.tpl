{{/* Names, labels and the pod template shared by every workload of the chart. */}}

{{- define "hookbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix; short enough that "-delivery" and "-admin" still fit 63. */}}
{{- define "hookbridge.fullname" -}}
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

{{- define "hookbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hookbridge.labels" -}}
helm.sh/chart: {{ include "hookbridge.chart" . }}
{{ include "hookbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hookbridge
{{- end }}

{{/* Labels of one workload: call with (dict "root" $ "component" "ingress"). */}}
{{- define "hookbridge.componentSelectorLabels" -}}
{{ include "hookbridge.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hookbridge.componentLabels" -}}
{{ include "hookbridge.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hookbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hookbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hookbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "hookbridge.adminSecretName" -}}
{{- default (printf "%s-admin" (include "hookbridge.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{- define "hookbridge.embedded" -}}
{{- if eq .Values.config.broker.kind "embedded" }}true{{ end }}
{{- end }}

{{/* Refuses what cannot work, with the value to change (values.schema.json catches most of
it first; these are the combinations a schema says less clearly). */}}
{{- define "hookbridge.validate" -}}
{{- $kind := .Values.config.broker.kind }}
{{- if and (eq $kind "embedded") (ne .Values.roles "all") }}
{{- fail "roles: split needs config.broker.kind kafka or nats: the embedded log belongs to one process" }}
{{- end }}
{{- if and (eq $kind "embedded") (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount: the embedded broker runs exactly one replica (its log is on one volume); use kafka or nats to scale out" }}
{{- end }}
{{- if and (eq $kind "kafka") (not .Values.config.broker.kafka.bootstrap_servers) }}
{{- fail "config.broker.kafka.bootstrap_servers is required with config.broker.kind kafka" }}
{{- end }}
{{- if and (eq $kind "nats") (not .Values.config.broker.nats.url) }}
{{- fail "config.broker.nats.url is required with config.broker.kind nats" }}
{{- end }}
{{- if and .Values.deliveryRole.keda.enabled (ne .Values.roles "split") }}
{{- fail "deliveryRole.keda.enabled needs roles: split (KEDA scales the delivery Deployment)" }}
{{- end }}
{{- if and .Values.deliveryRole.keda.enabled (ne $kind "kafka") }}
{{- fail "deliveryRole.keda.enabled: the lag trigger is Kafka's; with NATS scale delivery by deliveryRole.replicaCount (see the chart README)" }}
{{- end }}
{{- /* A file the config names under /etc/hookbridge-secrets/<name>/ needs that mount. */}}
{{- $mounted := list }}
{{- range .Values.secretMounts }}{{- $mounted = append $mounted .name }}{{- end }}
{{- range regexFindAll "/etc/hookbridge-secrets/[^/\\s\"']+/" (toYaml .Values.config) -1 }}
{{- $name := index (splitList "/" .) 3 }}
{{- if not (has $name $mounted) }}
{{- fail (printf "config names a file under %s, but secretMounts has no entry named %q" . $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The config file: the user's `config` with what belongs to the pod set by the chart. */}}
{{- define "hookbridge.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $broker := $config.broker }}
{{- $server := default dict $config.server }}
{{- $_ := set $server "listen" "0.0.0.0:8080" }}
{{- $_ := set $server "admin_listen" "0.0.0.0:9090" }}
{{- $_ := set $server "admin_token" "${HOOKBRIDGE_ADMIN_TOKEN}" }}
{{- $_ := set $server "shutdown_timeout" (printf "%ds" (int .Values.shutdownTimeoutSeconds)) }}
{{- $_ := set $config "server" $server }}
{{- /* Only the chosen broker's section goes in, so an unused one cannot fail validation. */}}
{{- $chosen := dict "kind" $broker.kind }}
{{- if eq $broker.kind "embedded" }}
{{- $embedded := deepCopy $broker.embedded }}
{{- $_ := set $embedded "dir" "/data" }}
{{- $_ := set $chosen "embedded" $embedded }}
{{- else if eq $broker.kind "kafka" }}
{{- $_ := set $chosen "kafka" $broker.kafka }}
{{- else }}
{{- $_ := set $chosen "nats" $broker.nats }}
{{- end }}
{{- $_ := set $config "broker" $chosen }}
{{- $_ := set $config "routes" (default list $config.routes) }}
{{- $_ := set $config "subscriptions" (default list $config.subscriptions) }}
{{- toYaml $config }}
{{- end }}

{{/* The maximum delivery replicas worth running: one per partition. */}}
{{- define "hookbridge.partitions" -}}
{{- $broker := .Values.config.broker }}
{{- if eq $broker.kind "kafka" }}{{ $broker.kafka.partitions }}{{ else if eq $broker.kind "nats" }}{{ $broker.nats.partitions }}{{ else }}{{ $broker.embedded.partitions }}{{ end }}
{{- end }}

{{/*
The pod template of a workload. Call with
(dict "root" $ "component" "server" "role" "all" "resources" $.Values.resources).
*/}}
{{- define "hookbridge.podTemplate" -}}
{{- $root := .root }}
metadata:
  labels:
    {{- include "hookbridge.componentSelectorLabels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- if ne .role "delivery" }}
    hookbridge.io/ingress: "true"
    {{- end }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    hookbridge.io/config-reload: {{ $root.Values.configReload | quote }}
    {{- if eq $root.Values.configReload "restart" }}
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- end }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "hookbridge.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ add $root.Values.shutdownTimeoutSeconds $root.Values.preStopSleepSeconds 10 }}
  containers:
    - name: hookbridge
      image: {{ include "hookbridge.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: [serve, --role, {{ .role }}, --log-format, json]
      env:
        - name: HOOKBRIDGE_CONFIG
          value: /etc/hookbridge/config.yaml
        - name: HOOKBRIDGE_ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ include "hookbridge.adminSecretName" $root }}
              key: token
        {{- with $root.Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $root.Values.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- if ne .role "delivery" }}
        - name: http
          containerPort: 8080
          protocol: TCP
        {{- end }}
        - name: admin
          containerPort: 9090
          protocol: TCP
      startupProbe:
        httpGet: { path: /healthz, port: admin }
        periodSeconds: 2
        failureThreshold: 150
      livenessProbe:
        httpGet: { path: /healthz, port: admin }
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      readinessProbe:
        httpGet: { path: /readyz, port: admin }
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      lifecycle:
        # Keep serving while endpoints drain, then SIGTERM starts the graceful stop.
        preStop:
          sleep:
            seconds: {{ $root.Values.preStopSleepSeconds }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/hookbridge
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if include "hookbridge.embedded" $root }}
        - name: data
          mountPath: /data
        {{- end }}
        {{- range $root.Values.secretMounts }}
        - name: secret-{{ .name }}
          mountPath: /etc/hookbridge-secrets/{{ .name }}
          readOnly: true
        {{- end }}
  volumes:
    # Mounted as a directory (not subPath), so a changed ConfigMap reaches the pod.
    - name: config
      configMap:
        name: {{ include "hookbridge.fullname" $root }}
    - name: tmp
      emptyDir: { sizeLimit: 64Mi }
    {{- range $root.Values.secretMounts }}
    # A directory, not subPath: a renewed Secret reaches the pod.
    - name: secret-{{ .name }}
      secret:
        secretName: {{ .secretName }}
        # Readable by the pod's fsGroup (hookbridge's group), nobody else.
        defaultMode: 0440
    {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  topologySpreadConstraints:
    {{- if $root.Values.topologySpreadConstraints }}
    {{- toYaml $root.Values.topologySpreadConstraints | nindent 4 }}
    {{- else }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "hookbridge.componentSelectorLabels" (dict "root" $root "component" .component) | nindent 10 }}
    {{- end }}
{{- end }}

{{/* An alert's runbook: its section of docs/operations.md, whose heading is the alert's
name. Call with (list $ "AlertName"). */}}
{{- define "hookbridge.runbook" -}}
{{- $root := index . 0 }}
{{- $base := required "prometheusRule.runbookBaseUrl: the URL of docs/operations.md the alerts' runbook links point at" $root.Values.prometheusRule.runbookBaseUrl }}
{{- printf "%s#%s" $base (lower (index . 1)) | quote }}
{{- end }}
