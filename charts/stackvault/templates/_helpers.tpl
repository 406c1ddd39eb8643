{{/* Names, labels, the configuration file and the pod spec shared by every workload. */}}

{{- define "stackvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name, at most 63 characters (a DNS label). */}}
{{- define "stackvault.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* fullname-SUFFIX within 63 characters: (list $ "suffix"). */}}
{{- define "stackvault.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "stackvault.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{/* A CronJob's name may have 52 characters: its Jobs append 11. */}}
{{- define "stackvault.cronjobName" -}}
{{- include "stackvault.fullname" . | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "stackvault.verifyCronjobName" -}}
{{- printf "%s-verify" (include "stackvault.fullname" . | trunc 45 | trimSuffix "-") -}}
{{- end -}}

{{- define "stackvault.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stackvault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stackvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stackvault.labels" -}}
helm.sh/chart: {{ include "stackvault.chart" . }}
{{ include "stackvault.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stackvault
{{- end -}}

{{- define "stackvault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stackvault.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stackvault.stack" -}}
{{- default .Release.Name .Values.stack -}}
{{- end -}}

{{- define "stackvault.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "stackvault.stateClaim" -}}
{{- default (include "stackvault.suffixed" (list . "state")) .Values.state.existingClaim -}}
{{- end -}}

{{- define "stackvault.repositoryClaim" -}}
{{- default (include "stackvault.suffixed" (list . "repository")) .Values.repository.filesystem.existingClaim -}}
{{- end -}}

{{- define "stackvault.credentialsSecret" -}}
{{- default (include "stackvault.suffixed" (list . "credentials")) .Values.credentials.existingSecret -}}
{{- end -}}

{{/* The Secret key and file of the Azure secret the credential kind reads, "" for identities. */}}
{{- define "stackvault.azureSecretKey" -}}
{{- $azure := .Values.repository.azure -}}
{{- $defaults := dict "shared_key" "azure-key" "sas" "azure-sas" "connection_string" "azure-connection-string" -}}
{{- if and (eq .Values.repository.type "azure") (hasKey $defaults $azure.credential) -}}
{{- default (get $defaults $azure.credential) $azure.secretKey -}}
{{- end -}}
{{- end -}}

{{- define "stackvault.databasePasswordKey" -}}
{{- default (printf "db-%s-password" .name) .passwordKey -}}
{{- end -}}

{{/* Whether any workload mounts the credentials Secret. */}}
{{- define "stackvault.needsCredentials" -}}
{{- if or (include "stackvault.azureSecretKey" .) .Values.databases -}}true{{- end -}}
{{- end -}}

{{- define "stackvault.workloadIdentity" -}}
{{- if and (eq .Values.repository.type "azure") (eq .Values.repository.azure.credential "workload_identity") -}}true{{- end -}}
{{- end -}}

{{- define "stackvault.secretsDir" -}}/run/secrets/stackvault{{- end -}}
{{- define "stackvault.configDir" -}}/etc/stackvault{{- end -}}
{{- define "stackvault.dataDir" -}}/var/lib/stackvault{{- end -}}

{{- define "stackvault.sourcePath" -}}
{{- default (printf "/data/%s" .name) .mountPath -}}
{{- end -}}

{{/*
The configuration file, as stackvault reads it (README.md, "Configuration"): only keys that
src/config.rs knows, since it rejects any other (tests/chart.rs parses every render with it).
*/}}
{{- define "stackvault.config" -}}
{{- $v := .Values -}}
{{- $secrets := include "stackvault.secretsDir" . -}}
{{- $data := include "stackvault.dataDir" . -}}
{{- $c := dict "stack" (include "stackvault.stack" .) "state_dir" (printf "%s/state" $data) "cache_dir" (printf "%s/cache" $data) -}}
{{- $paths := list -}}
{{- range $v.sources -}}
{{- $paths = append $paths (include "stackvault.sourcePath" .) -}}
{{- end -}}
{{- if $paths -}}{{- $_ := set $c "paths" $paths -}}{{- end -}}
{{- if $v.databases -}}
{{- $dbs := list -}}
{{- range $v.databases -}}
{{- $db := dict "name" .name "engine" .engine "host" .host "user" .user "password_file" (printf "%s/%s" $secrets (include "stackvault.databasePasswordKey" .)) -}}
{{- if .port -}}{{- $_ := set $db "port" (int .port) -}}{{- end -}}
{{- if .databases -}}{{- $_ := set $db "databases" .databases -}}{{- end -}}
{{- $dbs = append $dbs $db -}}
{{- end -}}
{{- $_ := set $c "databases" $dbs -}}
{{- end -}}
{{- if eq $v.repository.type "filesystem" -}}
{{- $fs := $v.repository.filesystem -}}
{{- $path := $fs.mountPath -}}
{{- if $fs.directory -}}{{- $path = printf "%s/%s" (trimSuffix "/" $fs.mountPath) (trimPrefix "/" $fs.directory) -}}{{- end -}}
{{- $_ := set $c "repository" (dict "filesystem" (dict "path" $path)) -}}
{{- else -}}
{{- $a := $v.repository.azure -}}
{{- $im := $a.immutability -}}
{{- $azure := dict "account" (required "repository.azure.account is required" $a.account) "container" (required "repository.azure.container is required" $a.container) "credential" $a.credential -}}
{{- $_ := set $azure "immutability" (dict "days" (int $im.days) "mode" $im.mode "legal_hold" $im.legalHold "required" $im.required "extend_ahead_days" (int $im.extendAheadDays)) -}}
{{- if $a.prefix -}}{{- $_ := set $azure "prefix" $a.prefix -}}{{- end -}}
{{- if $a.endpoint -}}{{- $_ := set $azure "endpoint" $a.endpoint -}}{{- end -}}
{{- if $a.retryFor -}}{{- $_ := set $azure "retry_for" $a.retryFor -}}{{- end -}}
{{- $fileKey := dict "shared_key" "key_file" "sas" "sas_file" "connection_string" "connection_string_file" -}}
{{- with include "stackvault.azureSecretKey" . -}}
{{- $_ := set $azure (get $fileKey $a.credential) (printf "%s/%s" $secrets .) -}}
{{- end -}}
{{- $_ := set $c "repository" (dict "azure" $azure) -}}
{{- end -}}
{{- if $v.encryption.recipients -}}{{- $_ := set $c "encryption" (dict "recipients" $v.encryption.recipients) -}}{{- end -}}
{{- if $v.exclude -}}{{- $_ := set $c "exclude" $v.exclude -}}{{- end -}}
{{- $_ := set $c "exclude_caches" $v.excludeCaches -}}
{{- $_ := set $c "log_format" $v.logFormat -}}
{{- if ne (toString $v.staging.maxBytes) "" -}}{{- $_ := set $c "staging" (dict "max_bytes" $v.staging.maxBytes) -}}{{- end -}}
{{- $retry := dict -}}
{{- if $v.retry.interval -}}{{- $_ := set $retry "interval" $v.retry.interval -}}{{- end -}}
{{- if $v.retry.window -}}{{- $_ := set $retry "window" $v.retry.window -}}{{- end -}}
{{- if $retry -}}{{- $_ := set $c "retry" $retry -}}{{- end -}}
{{- if $v.alerts.webhooks -}}
{{- $hooks := list -}}
{{- range $v.alerts.webhooks -}}
{{- $hook := dict "url" .url -}}
{{- if .format -}}{{- $_ := set $hook "format" .format -}}{{- end -}}
{{- if .events -}}{{- $_ := set $hook "on" .events -}}{{- end -}}
{{- $hooks = append $hooks $hook -}}
{{- end -}}
{{- $_ := set $c "alerts" (dict "webhooks" $hooks) -}}
{{- end -}}
{{- if eq $v.mode "daemon" -}}
{{- $schedule := dict "cron" $v.schedule -}}
{{- if $v.timeZone -}}{{- $_ := set $schedule "timezone" $v.timeZone -}}{{- end -}}
{{- if $v.jitter -}}{{- $_ := set $schedule "jitter" $v.jitter -}}{{- end -}}
{{- $_ := set $c "schedule" $schedule -}}
{{- $_ := set $c "listen" (printf "0.0.0.0:%d" (int $v.daemon.port)) -}}
{{- if $v.health.grace -}}{{- $_ := set $c "health" (dict "grace" $v.health.grace) -}}{{- end -}}
{{- if $v.verify.schedule -}}
{{- $verifySchedule := dict "cron" $v.verify.schedule -}}
{{- if $v.timeZone -}}{{- $_ := set $verifySchedule "timezone" $v.timeZone -}}{{- end -}}
{{- $_ := set $c "verify" (dict "schedule" $verifySchedule "read_data" $v.verify.readData) -}}
{{- end -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* Volumes and mounts of the sources: read-only for backups, read-write for restore. (list $ readOnly) */}}
{{- define "stackvault.sourceVolumes" -}}
{{- $root := index . 0 -}}
{{- $readOnly := index . 1 -}}
{{- range $i, $s := $root.Values.sources }}
- name: source-{{ $i }}
  persistentVolumeClaim:
    claimName: {{ $s.claimName }}
    {{- if $readOnly }}
    # A read-only claim is never re-owned for fsGroup: the application's files keep their group.
    readOnly: true
    {{- end }}
{{- end }}
{{- end -}}

{{- define "stackvault.sourceMounts" -}}
{{- $root := index . 0 -}}
{{- $readOnly := index . 1 -}}
{{- range $i, $s := $root.Values.sources }}
- name: source-{{ $i }}
  mountPath: {{ include "stackvault.sourcePath" $s }}
  {{- with $s.subPath }}
  subPath: {{ . }}
  {{- end }}
  readOnly: {{ $readOnly }}
{{- end }}
{{- end -}}

{{/*
The pod spec of every workload: (dict "root" $ "role" "backup|daemon|init|restore|verify" "args" (list ...)).
Only restore mounts the sources read-write and holds the age identity. Restore and init keep their
cache on an emptyDir, leaving the (ReadWriteOnce) state PVC and its run lock to the backups; init
and verify need no sources.
*/}}
{{- define "stackvault.podSpec" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $restore := eq .role "restore" -}}
{{- $podSecurity := ternary $v.restore.podSecurityContext $v.podSecurityContext $restore -}}
{{- $security := ternary $v.restore.securityContext $v.securityContext $restore -}}
serviceAccountName: {{ include "stackvault.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml (omit $podSecurity "supplementalGroups") | nindent 2 }}
  {{- with $podSecurity.supplementalGroups }}
  supplementalGroups:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- /* The restore runs while the application is stopped: affinity to its pods could never be met. */}}
{{- with (ternary $v.restore.affinity $v.affinity $restore) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: stackvault
    image: {{ include "stackvault.image" $root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    args:
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
    {{- if or $v.extraEnv $v.alerts.webhooksSecret.name }}
    env:
      {{- if $v.alerts.webhooksSecret.name }}
      - name: STACKVAULT_ALERTS_WEBHOOKS
        valueFrom:
          secretKeyRef:
            name: {{ $v.alerts.webhooksSecret.name }}
            key: {{ required "alerts.webhooksSecret.key is required with its name" $v.alerts.webhooksSecret.key }}
      {{- end }}
      {{- with $v.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- end }}
    {{- if eq .role "daemon" }}
    ports:
      - name: metrics
        containerPort: {{ $v.daemon.port }}
        protocol: TCP
    # Not /healthz: it fails while backups are late, which a restart cannot mend.
    livenessProbe:
      tcpSocket:
        port: metrics
      periodSeconds: 30
    {{- end }}
    {{- with $v.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $security | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: {{ include "stackvault.configDir" $root }}
        readOnly: true
      - name: data
        mountPath: {{ include "stackvault.dataDir" $root }}
      - name: tmp
        mountPath: /tmp
      {{- if eq $v.repository.type "filesystem" }}
      - name: repository
        mountPath: {{ $v.repository.filesystem.mountPath }}
        readOnly: {{ $restore }}
      {{- end }}
      {{- if include "stackvault.needsCredentials" $root }}
      - name: credentials
        mountPath: {{ include "stackvault.secretsDir" $root }}
        readOnly: true
      {{- end }}
      {{- if and $restore $v.restore.identity.secretName }}
      - name: identity
        mountPath: /run/secrets/stackvault-identity
        readOnly: true
      {{- end }}
      {{- if and $v.sources (ne .role "init") (ne .role "verify") }}
      {{- include "stackvault.sourceMounts" (list $root (not $restore)) | trim | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "stackvault.fullname" $root }}
  - name: data
    {{- if or $restore (eq .role "init") }}
    emptyDir: {}
    {{- else }}
    persistentVolumeClaim:
      claimName: {{ include "stackvault.stateClaim" $root }}
    {{- end }}
  - name: tmp
    emptyDir:
      sizeLimit: 1Gi
  {{- if eq $v.repository.type "filesystem" }}
  - name: repository
    persistentVolumeClaim:
      claimName: {{ include "stackvault.repositoryClaim" $root }}
      {{- if $restore }}
      readOnly: true
      {{- end }}
  {{- end }}
  {{- if include "stackvault.needsCredentials" $root }}
  - name: credentials
    secret:
      secretName: {{ include "stackvault.credentialsSecret" $root }}
      defaultMode: 0440
  {{- end }}
  {{- if and $restore $v.restore.identity.secretName }}
  - name: identity
    secret:
      secretName: {{ $v.restore.identity.secretName }}
      defaultMode: 0400
      items:
        - key: {{ $v.restore.identity.key }}
          path: identity.txt
  {{- end }}
  {{- if and $v.sources (ne .role "init") (ne .role "verify") }}
  {{- include "stackvault.sourceVolumes" (list $root (not $restore)) | trim | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The pod template's labels: the workload identity webhook acts on pods carrying its label. */}}
{{- define "stackvault.podLabels" -}}
{{- $root := .root -}}
{{ include "stackvault.labels" $root }}
app.kubernetes.io/component: {{ .role }}
{{- if include "stackvault.workloadIdentity" $root }}
azure.workload.identity/use: "true"
{{- end }}
{{- with $root.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Restarts the pods when the configuration changes (a Deployment's pods would keep the old file). */}}
{{- define "stackvault.podAnnotations" -}}
checksum/config: {{ include "stackvault.config" . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}
