{{/* Chart name, or nameOverride. */}}
{{- define "tpot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource-name prefix: fullnameOverride, else the release name (plus chart name unless it holds it). */}}
{{- define "tpot.fullname" -}}
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

{{/* helm.sh/chart label value. */}}
{{- define "tpot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; takes (dict "context" $ "component" "scheduler"). Never change them: selectors are immutable. */}}
{{- define "tpot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tpot.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects; takes (dict "context" $ "component" "scheduler"). */}}
{{- define "tpot.labels" -}}
{{ include "tpot.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: {{ include "tpot.name" .context }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
helm.sh/chart: {{ include "tpot.chart" .context }}
{{- end -}}

{{/* Labels that pick every pod of this release (the default-deny NetworkPolicy uses them). */}}
{{- define "tpot.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tpot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The one image for every container: repository:tag[@digest]; the tag defaults to appVersion, never latest. */}}
{{- define "tpot.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: `latest` is not allowed; pin a version (and optionally image.digest)" -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Fully qualified DNS name of the scheduler Service. */}}
{{- define "tpot.schedulerHost" -}}
{{- printf "%s-scheduler.%s.svc.%s" (include "tpot.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* Dask address of the scheduler through its Service. */}}
{{- define "tpot.schedulerAddress" -}}
{{- printf "tcp://%s:8786" (include "tpot.schedulerHost" .) -}}
{{- end -}}

{{/* Path of the Dask scheduler file inside pods that use schedulerFile. */}}
{{- define "tpot.schedulerFilePath" -}}
/var/run/tpot/scheduler.json
{{- end -}}

{{/* ServiceAccount name of a component; takes (dict "context" $ "component" "scheduler"). */}}
{{- define "tpot.serviceAccountName" -}}
{{- $sa := (index .context.Values .component).serviceAccount -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "tpot.fullname" .context) .component) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* PriorityClass of a component: its own value, else the chart's class when the chart creates one. */}}
{{- define "tpot.priorityClassName" -}}
{{- $own := (index .context.Values .component).priorityClassName -}}
{{- if $own -}}
{{- $own -}}
{{- else if .context.Values.priorityClass.create -}}
{{- printf "%s-%s" .context.Release.Namespace (include "tpot.fullname" .context) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Worker container memory limit in MiB: explicit value, else memoryLimitMb plus the headroom. */}}
{{- define "tpot.workerContainerMemoryMb" -}}
{{- $dask := int .Values.tpot.memoryLimitMb -}}
{{- if .Values.worker.containerMemoryLimitMb -}}
{{- int .Values.worker.containerMemoryLimitMb -}}
{{- else -}}
{{- add $dask (include "tpot.workerMemoryHeadroomMb" . | int) -}}
{{- end -}}
{{- end -}}

{{/* Worker headroom in MiB: the value, else a quarter of memoryLimitMb but at least 512 (nanny + spikes). */}}
{{- define "tpot.workerMemoryHeadroomMb" -}}
{{- if kindIs "invalid" .Values.worker.memoryHeadroomMb -}}
{{- max 512 (div (int .Values.tpot.memoryLimitMb) 4) -}}
{{- else -}}
{{- int .Values.worker.memoryHeadroomMb -}}
{{- end -}}
{{- end -}}

{{/* Pod security context every pod uses (restricted Pod Security Standard). */}}
{{- define "tpot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context every container uses (restricted Pod Security Standard). */}}
{{- define "tpot.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every container of the image gets: writable HOME on /tmp, no bytecode writes. */}}
{{- define "tpot.baseEnv" -}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{/* How a client process finds the scheduler: the Service address, or the scheduler file. */}}
{{- define "tpot.schedulerDiscoveryEnv" -}}
{{- if .Values.schedulerFile.enabled }}
- name: TPOT_SCHEDULER_FILE
  value: {{ include "tpot.schedulerFilePath" . }}
{{- else }}
- name: DASK_SCHEDULER_ADDRESS
  value: {{ include "tpot.schedulerAddress" . | quote }}
{{- end }}
{{- end -}}

{{/* Volume that holds scheduler.json in worker and backend pods (schedulerFile.enabled only). */}}
{{- define "tpot.schedulerFileVolume" -}}
{{- if .Values.schedulerFile.enabled }}
- name: scheduler-file
  {{- if .Values.schedulerFile.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.schedulerFile.existingClaim }}
    readOnly: true
  {{- else }}
  emptyDir:
    sizeLimit: 1Mi
  {{- end }}
{{- end }}
{{- end -}}

{{/* Init containers of worker and backend pods: write scheduler.json (emptyDir mode), then wait for the scheduler. */}}
{{- define "tpot.schedulerInitContainers" -}}
{{- $ := . -}}
{{- if and .Values.schedulerFile.enabled (not .Values.schedulerFile.existingClaim) }}
- name: write-scheduler-file
  image: {{ include "tpot.image" $ | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - tpot-backend
    - write-scheduler-file
    - --address
    - {{ include "tpot.schedulerAddress" $ | quote }}
    - --path
    - {{ include "tpot.schedulerFilePath" $ }}
  env:
    {{- include "tpot.baseEnv" $ | nindent 4 }}
  securityContext:
    {{- include "tpot.containerSecurityContext" $ | nindent 4 }}
  resources:
    {{- toYaml .Values.initContainerResources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: scheduler-file
      mountPath: /var/run/tpot
{{- end }}
{{- if .Values.waitForScheduler.enabled }}
- name: wait-for-scheduler
  image: {{ include "tpot.image" $ | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - tpot-backend
    - wait-for-scheduler
    - --timeout
    - {{ .Values.waitForScheduler.timeoutSeconds | quote }}
  env:
    {{- include "tpot.baseEnv" $ | nindent 4 }}
    {{- include "tpot.schedulerDiscoveryEnv" $ | nindent 4 }}
  securityContext:
    {{- include "tpot.containerSecurityContext" $ | nindent 4 }}
  resources:
    {{- toYaml .Values.initContainerResources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if .Values.schedulerFile.enabled }}
    - name: scheduler-file
      mountPath: /var/run/tpot
      readOnly: true
    {{- end }}
{{- end }}
{{- end -}}

{{/* Prometheus scrape annotations for a pod's metrics port (monitoring.scrapeAnnotations.enabled). */}}
{{- define "tpot.scrapeAnnotations" -}}
{{- if .context.Values.monitoring.scrapeAnnotations.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
