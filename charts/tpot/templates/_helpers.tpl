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

{{/* Pod template labels: all but helm.sh/chart, so a chart-only release does not restart the scheduler
(and fail every running job); takes (dict "context" $ "component" "scheduler"). */}}
{{- define "tpot.podLabels" -}}
{{ include "tpot.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: {{ include "tpot.name" .context }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
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

{{/* ServiceAccount name of a component; takes (dict "context" $ "component" "scheduler"), plus "key" when
its values section has another name (the test pod's is helmTest). */}}
{{- define "tpot.serviceAccountName" -}}
{{- $sa := (index .context.Values (default .component .key)).serviceAccount -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "tpot.fullname" .context) .component) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the PriorityClass the chart creates (cluster-scoped, so the namespace is part of it). */}}
{{- define "tpot.ownPriorityClassName" -}}
{{- printf "%s-%s" .Release.Namespace (include "tpot.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* PriorityClass of a component: its own value, else the chart's class when the chart creates one; takes
(dict "context" $ "component" "scheduler"), plus "key" as for tpot.serviceAccountName. */}}
{{- define "tpot.priorityClassName" -}}
{{- $own := (index .context.Values (default .component .key)).priorityClassName -}}
{{- if $own -}}
{{- $own -}}
{{- else if .context.Values.priorityClass.create -}}
{{- include "tpot.ownPriorityClassName" .context -}}
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
{{- if .Values.schedulerFile.enabled -}}
- name: TPOT_SCHEDULER_FILE
  value: {{ include "tpot.schedulerFilePath" . }}
{{- else -}}
- name: DASK_SCHEDULER_ADDRESS
  value: {{ include "tpot.schedulerAddress" . | quote }}
{{- end -}}
{{- end -}}

{{/* Volume that holds scheduler.json in worker and backend pods; include it only when schedulerFile.enabled. */}}
{{- define "tpot.schedulerFileVolume" -}}
- name: scheduler-file
{{- if .Values.schedulerFile.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.schedulerFile.existingClaim }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- end -}}

{{/* Whether worker and backend pods write scheduler.json themselves (schedulerFile on, no shared claim). */}}
{{- define "tpot.writesSchedulerFile" -}}
{{- if and .Values.schedulerFile.enabled (not .Values.schedulerFile.existingClaim) }}true{{ end -}}
{{- end -}}

{{/* MiB of the scheduler-file emptyDir (sizeLimit 1Mi) in pods that write the file themselves, else 0. */}}
{{- define "tpot.schedulerFileEmptyDirMb" -}}
{{- if include "tpot.writesSchedulerFile" . }}1{{ else }}0{{ end -}}
{{- end -}}

{{/* Init container that writes scheduler.json with the Service address into the pod's emptyDir; takes
(dict "context" $ "tmpMb" <the pod's /tmp sizeLimit in MiB>). */}}
{{- define "tpot.writeSchedulerFileContainer" -}}
{{- $storage := include "tpot.ephemeralStorage" (list .tmpMb 1) -}}
{{- with .context -}}
- name: write-scheduler-file
  image: {{ include "tpot.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - tpot-backend
    - write-scheduler-file
    - --address
    - {{ include "tpot.schedulerAddress" . | quote }}
    - --path
    - {{ include "tpot.schedulerFilePath" . }}
  env:
    {{- include "tpot.baseEnv" . | nindent 4 }}
  securityContext:
    {{- include "tpot.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- include "tpot.resources" (dict "resources" .Values.initContainerResources "storage" $storage) | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: scheduler-file
      mountPath: /var/run/tpot
{{- end -}}
{{- end -}}

{{/* Init container that waits, within waitForScheduler.timeoutSeconds, until the scheduler answers; takes
(dict "context" $ "tmpMb" <the pod's /tmp sizeLimit in MiB>). */}}
{{- define "tpot.waitForSchedulerContainer" -}}
{{- $fileMb := include "tpot.schedulerFileEmptyDirMb" .context | int -}}
{{- $storage := include "tpot.ephemeralStorage" (list .tmpMb $fileMb) -}}
{{- with .context -}}
- name: wait-for-scheduler
  image: {{ include "tpot.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - tpot-backend
    - wait-for-scheduler
    - --timeout
    - {{ .Values.waitForScheduler.timeoutSeconds | quote }}
  env:
    {{- include "tpot.baseEnv" . | nindent 4 }}
    {{- include "tpot.schedulerDiscoveryEnv" . | nindent 4 }}
  securityContext:
    {{- include "tpot.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- include "tpot.resources" (dict "resources" .Values.initContainerResources "storage" $storage) | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if .Values.schedulerFile.enabled }}
    - name: scheduler-file
      mountPath: /var/run/tpot
      readOnly: true
    {{- end }}
{{- end -}}
{{- end -}}

{{/* Prometheus scrape annotations for a pod's metrics port (monitoring.scrapeAnnotations.enabled). */}}
{{- define "tpot.scrapeAnnotations" -}}
{{- if .context.Values.monitoring.scrapeAnnotations.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* Secret that holds the backend's API token: the existing one, else the one the chart creates. */}}
{{- define "tpot.apiTokenSecretName" -}}
{{- default (printf "%s-api-token" (include "tpot.fullname" .)) .Values.backend.apiToken.existingSecret -}}
{{- end -}}

{{/* Size of the backend's data directory: backend.persistence.size, else 10Gi (claim or emptyDir). */}}
{{- define "tpot.backendDataSize" -}}
{{- default "10Gi" .Values.backend.persistence.size -}}
{{- end -}}

{{/* Claim that holds the backend's data directory: the existing one, else the one the chart creates. */}}
{{- define "tpot.backendClaimName" -}}
{{- default (printf "%s-backend-data" (include "tpot.fullname" .)) .Values.backend.persistence.existingClaim -}}
{{- end -}}

{{/* NetworkPolicy peer: this release's pods of the given components; (dict "context" $ "components" (list ...)). */}}
{{- define "tpot.componentPeer" -}}
- podSelector:
    matchLabels:
      {{- include "tpot.releaseSelectorLabels" .context | nindent 6 }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values:
          {{- toYaml .components | nindent 10 }}
{{- end -}}

{{/* NetworkPolicy peer: the Prometheus pods allowed to scrape metrics ports. */}}
{{- define "tpot.monitoringPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.monitoring.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.monitoring.podSelector | nindent 4 }}
{{- end -}}

{{/* NetworkPolicy egress rule: DNS lookups to the cluster DNS pods and networkPolicy.dns.extraPeers. */}}
{{- define "tpot.dnsEgressRule" -}}
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 8 }}
    {{- with .Values.networkPolicy.dns.extraPeers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* ephemeral-storage of a container, e.g. "1380Mi": the emptyDir sizeLimits it mounts (a list of MiB)
plus 100 MiB for its own logs (the kubelet keeps 5 files of 10 MiB by default; the root filesystem is
read-only). The pod's limit is the sum of its containers', so the kubelet evicts it before a node fills. */}}
{{- define "tpot.ephemeralStorage" -}}
{{- $total := 100 -}}
{{- range . }}{{ $total = add $total . }}{{ end -}}
{{- printf "%dMi" (int $total) -}}
{{- end -}}

{{/* A resources block with ephemeral-storage (request = limit) added to the values' cpu and memory; takes
(dict "resources" .Values.<component>.resources "storage" (include "tpot.ephemeralStorage" ...)). */}}
{{- define "tpot.resources" -}}
{{- $resources := deepCopy .resources -}}
{{- $_ := set $resources.requests "ephemeral-storage" .storage -}}
{{- $_ = set $resources.limits "ephemeral-storage" .storage -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* A memory quantity (e.g. 3Gi, 512Mi, 2G) in MiB, as a float. */}}
{{- define "tpot.quantityMb" -}}
{{- $text := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text -}}
{{- $unit := trimPrefix $number $text -}}
{{- $perUnit := dict "" 0.00000095367431640625 "Ki" 0.0009765625 "Mi" 1.0 "Gi" 1024.0
    "Ti" 1048576.0 "k" 0.00095367431640625 "M" 0.95367431640625 "G" 953.67431640625
    "T" 953674.31640625 -}}
{{- if not (hasKey $perUnit $unit) -}}
{{- fail (printf "memory quantity %q: unit %q is not one of Ki, Mi, Gi, Ti, k, M, G, T" $text $unit) -}}
{{- end -}}
{{- mulf (float64 $number) (index $perUnit $unit) -}}
{{- end -}}
