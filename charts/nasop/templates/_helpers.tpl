{{/* The release's full name: "nasop" for a release named nasop, else <release>-nasop. */}}
{{- define "nasop.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nasop.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nasop.labels" -}}
{{ include "nasop.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "nasop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nasop.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Trial reports carry the trial pod's projected ServiceAccount token (audience
nasop.dev); the operator checks each with a TokenReview. */}}
{{- define "nasop.tokenReviewRule" -}}
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
{{- end -}}

{{- define "nasop.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* The URL trial pods post reports to: this release's Service. */}}
{{- define "nasop.reportURL" -}}
{{- printf "%s://%s.%s.svc:%d/v1/report" (ternary "https" "http" (ne .Values.tls.secretName "")) (include "nasop.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}
