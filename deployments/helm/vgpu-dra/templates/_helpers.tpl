{{/* The DRA driver name: also the attribute domain and the DeviceClass prefix (api/names.py). */}}
{{- define "vgpu-dra.driverName" -}}vgpu.dra.dev{{- end }}

{{/* Where the image carries libvgpu.so (Dockerfile; the plugin's default --shim). */}}
{{- define "vgpu-dra.imageShimPath" -}}/usr/local/lib/vgpu-dra/libvgpu.so{{- end }}

{{/* Namespace of the plugin's Node events: the kubelet's choice, "default". */}}
{{- define "vgpu-dra.nodeEventNamespace" -}}default{{- end }}

{{/* Where the init container finds NVML through a link to the host driver's library. */}}
{{- define "vgpu-dra.nvmlLinkDir" -}}/run/vgpu-dra/nvml{{- end }}
{{- define "vgpu-dra.driverRootMount" -}}/driver-root{{- end }}

{{- define "vgpu-dra.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped prefix of every namespaced or cluster-scoped object this chart owns. */}}
{{- define "vgpu-dra.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "vgpu-dra.controller.fullname" -}}{{ include "vgpu-dra.fullname" . }}-controller{{- end }}
{{- define "vgpu-dra.kubeletPlugin.fullname" -}}{{ include "vgpu-dra.fullname" . }}-kubelet-plugin{{- end }}

{{- define "vgpu-dra.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vgpu-dra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vgpu-dra.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vgpu-dra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "vgpu-dra.kubeletPlugin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vgpu-dra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kubelet-plugin
{{- end }}

{{- define "vgpu-dra.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "vgpu-dra.controllerEnabled" -}}
{{- if eq .Values.allocator "controller" }}true{{- end }}
{{- end }}

{{/* The HAMi admission webhook (templates/hami-webhook.yaml). */}}
{{- define "vgpu-dra.hamiWebhook.fullname" -}}{{ include "vgpu-dra.fullname" . }}-hami-webhook{{- end }}

{{- define "vgpu-dra.hamiWebhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vgpu-dra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hami-webhook
{{- end }}

{{/* CEL: some container or init container names a HAMi resource (driver/hami_translation.py HAMI_RESOURCES). */}}
{{- define "vgpu-dra.hamiWebhook.asksForGpu" -}}
{{- $names := "['nvidia.com/gpu', 'nvidia.com/gpumem', 'nvidia.com/gpumem-percentage', 'nvidia.com/gpucores', 'nvidia.com/priority']" -}}
{{- $c := printf "has(c.resources) && ((has(c.resources.limits) && c.resources.limits.exists(k, k in %s)) || (has(c.resources.requests) && c.resources.requests.exists(k, k in %s)))" $names $names -}}
{{- printf "object.spec.containers.exists(c, %s) || (has(object.spec.initContainers) && object.spec.initContainers.exists(c, %s))" $c $c -}}
{{- end }}

{{- define "vgpu-dra.hamiWebhook.common" -}}
clientConfig:
  service:
    name: {{ include "vgpu-dra.hamiWebhook.fullname" . }}
    namespace: {{ .Release.Namespace }}
    path: /mutate-hami
    port: 443
rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
    scope: Namespaced
sideEffects: NoneOnDryRun
admissionReviewVersions: ["v1"]
timeoutSeconds: {{ .Values.hamiWebhook.timeoutSeconds }}
reinvocationPolicy: Never
{{- end }}
