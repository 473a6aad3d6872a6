"""Pending pods still written for HAMi: read for `vgpu-dra doctor` (its `hami-pods` check) and
`vgpu-dra status` (a section shown when such pods wait). The verdict itself is pure
(`driver.doctor_checks.check_hami_pods`); this module only lists what it needs."""
from __future__ import annotations

from vgpu_dra.controller.kubeapi import MUTATING_WEBHOOK_CONFIGURATIONS, PODS, ApiError, KubeApi
from vgpu_dra.driver import doctor_checks as checks
from vgpu_dra.driver.doctor_checks import Status, Verdict

# The chart labels its HAMi webhook so that it can be told from any other mutating webhook.
HAMI_WEBHOOK_SELECTOR = "app.kubernetes.io/component=hami-webhook,app.kubernetes.io/name=vgpu-dra"


def hami_verdict(api: KubeApi) -> Verdict:
    """Whether pending pods ask for HAMi resources, and whether vgpu-dra's HAMi webhook is there to
    translate new ones; a WARN naming the HTTP status when the pods cannot be listed."""
    try:
        pending = [pod for page in api.pages(PODS, field_selector="status.phase=Pending")
                   for pod in page.get("items") or []]
    except ApiError as exc:
        return Verdict(checks.HAMI_PODS, Status.WARN,
                       f"cannot list pending pods ({exc.status} {exc.reason}), so pods written for HAMi are not checked",
                       "use a kubeconfig whose user may list pods in every namespace")
    try:
        installed = bool(api.list(MUTATING_WEBHOOK_CONFIGURATIONS, label_selector=HAMI_WEBHOOK_SELECTOR).get("items"))
    except ApiError:
        # Not allowed to read webhook configurations: say "nothing serves them", whose fix (install
        # the webhook, or `vgpu-dra migrate`) is right either way.
        installed = False
    return checks.check_hami_pods(pending, installed)
