"""Lists longer than a page: `KubeApi.pages` follows the continue tokens the server hands out, so
an informer (and `vgpu-dra status`) sees every object, on the fake API server and the real one."""
from __future__ import annotations

import threading

from vgpu_dra.controller.informer import Informer
from vgpu_dra.controller.kubeapi import RESOURCE_CLAIMS, KubeApi

from .backends import client_for
from .cluster import claim, vgpu_config
from .waiting import wait_for

NAMES = [f"paged-{i}" for i in range(7)]


def test_every_page_of_a_list_is_read_and_the_informer_syncs_all_of_it(api_backend):
    for name in NAMES:
        api_backend.create(claim(name, config=vgpu_config(memoryPercent=10)))
    with client_for(api_backend, "informer") as client:
        api = KubeApi(client)
        pages = list(api.pages(RESOURCE_CLAIMS, "default", limit=3))
        assert len(pages) == 3  # 3 + 3 + 1
        assert sorted(c["metadata"]["name"] for p in pages for c in p["items"]) == NAMES
        assert pages[-1]["metadata"]["resourceVersion"]

        informer = Informer(api, RESOURCE_CLAIMS, lambda *_: None, namespace="default", page_size=2)
        stop = threading.Event()
        thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: informer.synced.is_set() or None, what="the informer synced from pages of 2")
            assert sorted(c["metadata"]["name"] for c in informer.items()) == NAMES
        finally:
            stop.set()
            thread.join(timeout=10)
