{{/* What the schema cannot say: combinations of values that would render a chart that cannot work. */}}
{{- define "stackvault.validate" -}}
{{- $v := .Values -}}
{{- if and $v.serviceMonitor.enabled (ne $v.mode "daemon") -}}
{{- fail "serviceMonitor.enabled needs mode: daemon: a CronJob's pod lives too briefly to be scraped (prometheusRule alerts on kube-state-metrics instead)" -}}
{{- end -}}
{{- if and (include "stackvault.workloadIdentity" .) (not $v.serviceAccount.workloadIdentity.clientId) (not (hasKey $v.serviceAccount.annotations "azure.workload.identity/client-id")) -}}
{{- fail "repository.azure.credential workload_identity needs serviceAccount.workloadIdentity.clientId (the managed identity's client id)" -}}
{{- end -}}
{{- if and (include "stackvault.workloadIdentity" .) (not $v.serviceAccount.create) -}}
{{- fail "repository.azure.credential workload_identity needs serviceAccount.create: the chart annotates the account it creates" -}}
{{- end -}}
{{- if and $v.restore.enabled $v.encryption.recipients (not $v.restore.identity.secretName) -}}
{{- fail "restore.enabled with encryption.recipients needs restore.identity.secretName: the Secret holding the age identity" -}}
{{- end -}}
{{- $names := dict -}}
{{- range $v.sources -}}
{{- $path := include "stackvault.sourcePath" . -}}
{{- if hasKey $names $path -}}{{- fail (printf "sources: two sources are mounted at %s" $path) -}}{{- end -}}
{{- $_ := set $names $path true -}}
{{- end -}}
{{- if not $v.credentials.existingSecret -}}
{{- with include "stackvault.azureSecretKey" . -}}
{{- $value := get (dict "azure-key" $v.credentials.azureKey "azure-sas" $v.credentials.azureSas "azure-connection-string" $v.credentials.azureConnectionString) . -}}
{{- if not $value -}}
{{- fail (printf "repository.azure.credential %s needs its secret: set the matching credentials value (azureKey, azureSas, azureConnectionString) or credentials.existingSecret" $v.repository.azure.credential) -}}
{{- end -}}
{{- end -}}
{{- range $v.databases -}}
{{- if not (hasKey $v.credentials.databasePasswords .name) -}}
{{- fail (printf "databases %s: set credentials.databasePasswords.%s, or credentials.existingSecret with the key %s" .name .name (include "stackvault.databasePasswordKey" .)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
