{{/* Names, labels and the pieces every RLMF workload shares. */}}

{{- define "rlmf.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-rlmf, or just <release> when it already contains the chart name. */}}
{{- define "rlmf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object; call with (dict "root" $ "component" "ingest"). */}}
{{- define "rlmf.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "rlmf.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: rlmf
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The immutable subset used in selectors. */}}
{{- define "rlmf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rlmf.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image.overrides.<service> (a full reference, set by skaffold) wins over the composed name. */}}
{{- define "rlmf.image" -}}
{{- $override := index .root.Values.image.overrides .service | default "" -}}
{{- if $override -}}
{{- $override -}}
{{- else -}}
{{- printf "%s/rlmf-%s:%s" .root.Values.image.registry .service (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The Strimzi Kafka cluster's name. Strimzi derives Service and pod names from it
(<cluster>-kafka-bootstrap, <cluster>-<pool>-<id>), which must stay within 63 characters, so a
long release name is cut to 15 characters plus 8 of its sha256: still one name per release.
*/}}
{{- define "rlmf.kafkaCluster" -}}
{{- $full := include "rlmf.fullname" . -}}
{{- if le (len $full) 18 -}}
{{- printf "%s-kafka" $full -}}
{{- else -}}
{{- printf "%s-%s" ($full | trunc 15 | trimSuffix "-") ($full | sha256sum | trunc 8) -}}
{{- end -}}
{{- end -}}

{{/* SCRAM-SHA-512 over TLS for the Kafka clients: Strimzi's (kafka.strimzi.authentication) or
an existing Kafka's (kafka.client.securityProtocol). */}}
{{- define "rlmf.kafkaSecure" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{- ternary "true" "" (eq .Values.kafka.strimzi.authentication "scram-sha-512") -}}
{{- else -}}
{{- ternary "true" "" (ne .Values.kafka.client.securityProtocol "PLAINTEXT") -}}
{{- end -}}
{{- end -}}

{{/* Kafka bootstrap: Strimzi's bootstrap Service (the TLS listener on 9093 when clients
authenticate), or the given address; stops when neither. */}}
{{- define "rlmf.kafkaBootstrap" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{- printf "%s-kafka-bootstrap:%s" (include "rlmf.kafkaCluster" .) (ternary "9093" "9092" (eq (include "rlmf.kafkaSecure" .) "true")) -}}
{{- else -}}
{{- required "kafka.bootstrap is required (the address of an existing Kafka) unless kafka.strimzi.enabled=true" .Values.kafka.bootstrap -}}
{{- end -}}
{{- end -}}

{{/* The Strimzi KafkaUser one client authenticates as, <cluster>-<client>; its Secret (same
name) holds the password. Call with (dict "root" $ "client" "sentiment"). */}}
{{- define "rlmf.kafkaUser" -}}
{{- printf "%s-%s" (include "rlmf.kafkaCluster" .root) .client -}}
{{- end -}}

{{/*
What each Kafka client may do, for its own KafkaUser's ACLs (kafka-strimzi.yaml): the topics it
reads (Read, Describe), the topics it writes (Write, Describe) and its consumer groups. A
consumer writes the .dlq twin of each topic it reads (bad messages, services/common/bus.py).
ARCHITECTURE's service table and services/common/topics.py are the source; a test compares.
*/}}
{{- define "rlmf.kafkaAccess" -}}
ingest:
  reads: []
  writes: [news.raw.v1, news.raw.v1.dlq]
  groups: []
sentiment:
  reads: [news.raw.v1]
  writes: [news.enriched.v1, news.raw.v1.dlq]
  groups: [rlmf-sentiment]
features:
  reads: [market.bars.v1, news.enriched.v1]
  writes: [features.ready.v1, market.bars.v1.dlq, news.enriched.v1.dlq]
  groups: [rlmf-features]
simulator:
  # features.ready.v1: the watermarks, read without a group; one it cannot decode goes to
  # features.ready.v1.dlq.
  reads: [market.bars.v1, features.ready.v1]
  writes: [trading.decisions.v1, trading.fills.v1, portfolio.snapshots.v1, market.feedback.v1, trading.shadow.v1, market.bars.v1.dlq, features.ready.v1.dlq]
  groups: [rlmf-simulator]
trainer:
  # market.bars.v1 and market.feedback.v1 into its work volume (rlmf-trainer-history), and the
  # candidate's shadow decisions (rlmf-trainer-history-shadow); models.promotions.v1.dlq only
  # because it makes sure the promotions topic and its twin exist.
  reads: [market.bars.v1, market.feedback.v1, trading.shadow.v1]
  writes: [models.promotions.v1, models.promotions.v1.dlq, market.bars.v1.dlq, market.feedback.v1.dlq, trading.shadow.v1.dlq]
  groups: [rlmf-trainer, rlmf-trainer-history, rlmf-trainer-history-shadow]
promotion-watcher:
  reads: [models.promotions.v1, market.feedback.v1]
  writes: [models.promotions.v1.dlq, market.feedback.v1.dlq]
  groups: [rlmf-promotion-watcher]
# Whatever publishes the bars (your market feed, or `rlmf market publish`): its login is the
# Secret of this user.
market-feed:
  reads: []
  writes: [market.bars.v1]
  groups: []
# `helm test` (files/pipeline_test.py): one news item and one bar in, their results read back
# without a group.
test:
  reads: [news.enriched.v1, features.ready.v1]
  writes: [news.raw.v1, market.bars.v1]
  groups: []
{{- end -}}

{{/* The client name of a values key: promotionWatcher -> promotion-watcher. */}}
{{- define "rlmf.kafkaClient" -}}
{{- ternary "promotion-watcher" . (eq . "promotionWatcher") -}}
{{- end -}}

{{/* Kafka client security settings (services/common/settings.py BusSettings), set on every Kafka
client when TLS/SCRAM is on; the CA and password come from Secrets, never from values. Call
with (dict "root" $ "client" "sentiment"): under Strimzi each client logs in as its own user. */}}
{{- define "rlmf.kafkaSecurityEnv" -}}
{{- if eq (include "rlmf.kafkaSecure" .root) "true" -}}
{{- $login := include "rlmf.kafkaLogin" . | fromYaml -}}
- name: RLMF_BUS_SECURITY_PROTOCOL
  value: {{ $login.protocol | quote }}
- name: RLMF_BUS_SASL_MECHANISM
  value: {{ $login.mechanism | quote }}
- name: RLMF_BUS_SASL_USERNAME
  value: {{ $login.username | quote }}
- name: RLMF_BUS_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $login.passwordSecret }}
      key: {{ $login.passwordKey }}
- name: RLMF_BUS_SSL_CAFILE
  value: /etc/rlmf/kafka-ca/ca.crt
{{- end -}}
{{- end -}}

{{/* Who a client logs in as and where the secrets lie, as YAML: its Strimzi KafkaUser and the
cluster CA, or kafka.client's settings for an existing Kafka (one identity for every client,
each setting required there). Call with (dict "root" $ "client" "sentiment"). */}}
{{- define "rlmf.kafkaLogin" -}}
{{- $root := .root -}}
{{- if $root.Values.kafka.strimzi.enabled -}}
protocol: SASL_SSL
mechanism: SCRAM-SHA-512
username: {{ include "rlmf.kafkaUser" . }}
passwordSecret: {{ include "rlmf.kafkaUser" . }}
passwordKey: password
caSecret: {{ include "rlmf.kafkaCluster" $root }}-cluster-ca-cert
caKey: ca.crt
{{- else -}}
{{- $c := $root.Values.kafka.client -}}
{{- $why := "is required when kafka.client.securityProtocol is not PLAINTEXT" -}}
{{- /* kafka.client.clients.<client>: that client's own login, else the shared one. */ -}}
{{- $own := index (default (dict) $c.clients) (toString .client) | default (dict) -}}
protocol: {{ $c.securityProtocol }}
mechanism: {{ $c.saslMechanism }}
{{- if $own }}
username: {{ $own.username | quote }}
passwordSecret: {{ $own.passwordSecret.name }}
passwordKey: {{ $own.passwordSecret.key | quote }}
{{- else }}
username: {{ required (printf "kafka.client.username %s" $why) $c.username | quote }}
passwordSecret: {{ required (printf "kafka.client.passwordSecret.name %s" $why) $c.passwordSecret.name }}
passwordKey: {{ $c.passwordSecret.key | quote }}
{{- end }}
caSecret: {{ required (printf "kafka.client.caSecret.name %s" $why) $c.caSecret.name }}
caKey: {{ $c.caSecret.key | quote }}
{{- end -}}
{{- end -}}

{{/* The cluster CA's Secret (Strimzi's <cluster>-cluster-ca-cert, or kafka.client.caSecret). */}}
{{- define "rlmf.kafkaCaVolume" -}}
{{- if eq (include "rlmf.kafkaSecure" .) "true" -}}
{{- $login := include "rlmf.kafkaLogin" (dict "root" . "client" "ca") | fromYaml -}}
- name: kafka-ca
  secret:
    secretName: {{ $login.caSecret }}
    items:
      - {key: {{ $login.caKey | quote }}, path: ca.crt}
{{- end -}}
{{- end -}}

{{- define "rlmf.kafkaCaMount" -}}
{{- if eq (include "rlmf.kafkaSecure" .) "true" -}}
- {name: kafka-ca, mountPath: /etc/rlmf/kafka-ca, readOnly: true}
{{- end -}}
{{- end -}}

{{/* The port every Kafka client's NetworkPolicy opens towards the brokers. */}}
{{- define "rlmf.kafkaPort" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{- ternary "9093" "9092" (eq (include "rlmf.kafkaSecure" .) "true") -}}
{{- else -}}
{{- .Values.kafka.client.port -}}
{{- end -}}
{{- end -}}

{{/*
Where the simulator and the trainer reach the policy: KServe's predictor Service,
<isvc>-predictor, which exists in both deployment modes (RawDeployment: a plain Service on port
80; Serverless: the Knative route that carries the canary split). <isvc> alone exists only
under Serverless.
*/}}
{{- define "rlmf.policyUrl" -}}
{{- printf "http://%s-policy-predictor.%s.svc.cluster.local" (include "rlmf.fullname" .) (include "rlmf.policyNamespace" .) -}}
{{- end -}}

{{/* The namespace of the policy's own release (charts/rlmf-policy): the InferenceService and
Helm's records of that release alone, so the trainer's rights there reach nothing else. */}}
{{- define "rlmf.policyNamespace" -}}
{{- default (printf "%s-policy" .Release.Namespace) .Values.policyNamespace.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The policy's InferenceService (charts/rlmf-policy names it the same way). */}}
{{- define "rlmf.policyIsvc" -}}
{{- printf "%s-policy" (include "rlmf.fullname" .) -}}
{{- end -}}

{{- define "rlmf.redisAddress" -}}
{{- default (printf "%s-redis:6379" (include "rlmf.fullname" .)) .Values.feast.redis.external -}}
{{- end -}}

{{/* The Secret holding Redis' password: feast.redis.passwordSecret.name, else, for the chart's
own Redis, <fullname>-redis (created before install, see docs/cluster.md); an external Redis
without one has no password. */}}
{{- define "rlmf.redisPasswordSecret" -}}
{{- if .Values.feast.redis.passwordSecret.name -}}
{{- .Values.feast.redis.passwordSecret.name -}}
{{- else if not .Values.feast.redis.external -}}
{{- printf "%s-redis" (include "rlmf.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "rlmf.modelsClaim" -}}
{{- if .Values.models.create -}}
{{- printf "%s-models" (include "rlmf.fullname" .) -}}
{{- else -}}
{{- required "models.existingClaim is required when models.create=false" .Values.models.existingClaim -}}
{{- end -}}
{{- end -}}

{{/* Environment every RLMF container gets; call with (dict "root" $ "service" "ingest"). */}}
{{- define "rlmf.commonEnv" -}}
- name: RLMF_BUS_BOOTSTRAP
  value: {{ include "rlmf.kafkaBootstrap" .root | quote }}
- name: RLMF_BUS_GROUP_PROTOCOL
  value: group
- name: RLMF_BUS_PARTITIONS
  value: {{ .root.Values.kafka.partitions | quote }}
- name: RLMF_HTTP_HOST
  value: "0.0.0.0"
- name: RLMF_HTTP_PORT
  value: {{ index .root.Values.ports .service | quote }}
- name: RLMF_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: RLMF_LOG_JSON_FORMAT
  value: "true"
- name: RLMF_MODELS_DIR
  value: /models
{{- if not .noFieldRef }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- if not .noKafka }}
{{- include "rlmf.kafkaSecurityEnv" (dict "root" .root "client" (include "rlmf.kafkaClient" .service)) | nindent 0 }}
{{- end }}
{{- range $name, $value := (index .root.Values .service).env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Feast settings for the services that read or write features (services/features/settings.py):
the cluster store (Redis online, Parquet offline on the models volume, shared with the trainer). */}}
{{- define "rlmf.feastEnv" -}}
- name: RLMF_FEATURES_STORE
  value: cluster
- name: RLMF_FEATURES_PROJECT
  value: {{ .Values.feast.project | quote }}
- name: RLMF_FEATURES_REDIS_ADDRESS
  value: {{ include "rlmf.redisAddress" . | quote }}
{{- with include "rlmf.redisPasswordSecret" . }}
- name: RLMF_FEATURES_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.feast.redis.passwordSecret.key }}
{{- end }}
- name: RLMF_FEATURES_REPO_DIR
  value: /app/feature_repo
- name: RLMF_FEATURES_DATA_DIR
  value: /models/feast
- name: RLMF_FEATURES_TICKERS
  value: {{ join "," (include "rlmf.featureTickers" . | fromYamlArray) | quote }}
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

{{- define "rlmf.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 4
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 5
  failureThreshold: 60
{{- end -}}

{{/*
A Deployment, its Service and (replicas > 1) a PodDisruptionBudget for one long-running
service; call with (dict "root" $ "service" "ingest" "feast" true "models" false).
*/}}
{{- define "rlmf.deployment" -}}
{{- $root := .root -}}
{{- $spec := index $root.Values .service -}}
{{- $ctx := dict "root" $root "component" .service -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "rlmf.fullname" $root }}-{{ .service }}
  labels:
    {{- include "rlmf.labels" $ctx | nindent 4 }}
spec:
  {{- /* KEDA's HPA owns the replica count of a consumer it scales (keda-scaledobjects.yaml). */}}
  {{- if not (and $root.Values.keda.enabled (has .service (list "sentiment" "features" "simulator"))) }}
  replicas: {{ $spec.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "rlmf.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "rlmf.labels" $ctx | nindent 8 }}
      annotations:
        checksum/feast: {{ include (print $root.Template.BasePath "/feast-configmap.yaml") $root | sha256sum }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      automountServiceAccountToken: false
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .service }}
          image: {{ include "rlmf.image" (dict "root" $root "service" .service) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: http
              containerPort: {{ index $root.Values.ports .service }}
              protocol: TCP
          env:
            {{- include "rlmf.commonEnv" (dict "root" $root "service" .service) | nindent 12 }}
            {{- if .feast }}
            {{- include "rlmf.feastEnv" $root | nindent 12 }}
            {{- end }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "rlmf.probes" . | nindent 10 }}
          resources:
            {{- include "rlmf.resources" (dict "spec" $spec) | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            {{- if .feastWritable }}
            # Feast's offline files only: a subPath of the models volume, so the writer of
            # features cannot reach the teacher, the students or their manifests.
            - {name: models, mountPath: /models/feast, subPath: feast}
            {{- else }}
            - {name: models, mountPath: /models, readOnly: true}
            {{- end }}
            {{- if .feast }}
            # The chart's store config replaces the image's copy of the repo's cluster config.
            - {name: feast-config, mountPath: /app/feature_repo/feature_store.cluster.yaml, subPath: feature_store.yaml, readOnly: true}
            {{- end }}
            {{- include "rlmf.kafkaCaMount" $root | nindent 12 }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: {{ $root.Values.tmpSizeLimit }}}
        {{- include "rlmf.kafkaCaVolume" $root | nindent 8 }}
        - name: models
          persistentVolumeClaim:
            claimName: {{ include "rlmf.modelsClaim" $root }}
            readOnly: {{ not .feastWritable }}
        {{- if .feast }}
        - name: feast-config
          configMap:
            name: {{ include "rlmf.fullname" $root }}-feast
        {{- end }}
      {{- with $spec.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "rlmf.fullname" $root }}-{{ .service }}
  labels:
    {{- include "rlmf.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "rlmf.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ index $root.Values.ports .service }}
      targetPort: http
      protocol: TCP
{{- if gt (int $spec.replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "rlmf.fullname" $root }}-{{ .service }}
  labels:
    {{- include "rlmf.labels" $ctx | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "rlmf.selectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Where the simulator reaches the policy (KServe's in-cluster URL of the InferenceService). */}}
{{- define "rlmf.simulatorEnv" -}}
- name: RLMF_SIMULATOR_MODE
  value: live
- name: RLMF_SIMULATOR_TICKERS
  value: {{ toJson .Values.tickers | quote }}
- name: RLMF_SIMULATOR_POLICY_URL
  value: {{ include "rlmf.policyUrl" . | quote }}
- name: RLMF_SIMULATOR_FEATURES_SOURCE
  value: {{ .Values.simulator.featuresSource | quote }}
{{- end -}}

{{/* Every topic and its .dlq twin (services/common/topics.py; a test keeps them equal). */}}
{{- define "rlmf.topics" -}}
- news.raw.v1
- news.raw.v1.dlq
- news.enriched.v1
- news.enriched.v1.dlq
- market.bars.v1
- market.bars.v1.dlq
- features.ready.v1
- features.ready.v1.dlq
- trading.decisions.v1
- trading.decisions.v1.dlq
- trading.fills.v1
- trading.fills.v1.dlq
- portfolio.snapshots.v1
- portfolio.snapshots.v1.dlq
- market.feedback.v1
- market.feedback.v1.dlq
- models.promotions.v1
- models.promotions.v1.dlq
- trading.shadow.v1
- trading.shadow.v1.dlq
{{- end -}}

{{/* Tickers the features service accepts: the traded ones plus the `helm test` ticker. */}}
{{- define "rlmf.featureTickers" -}}
{{- $tickers := .Values.tickers -}}
{{- if .Values.tests.enabled }}{{ $tickers = append $tickers .Values.tests.ticker | uniq }}{{ end -}}
{{- toYaml $tickers -}}
{{- end -}}
