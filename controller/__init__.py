"""The cluster-wide allocation controller (`vgpu-dra controller`): see docs/controller.md.

service (leader election, terms) -> allocation_term (caches, books, queue, workers, deallocation)
with pod_sync (allocating a pending pod's claims) and claim_writes (every conditional patch) over
informer/workqueue/kubeapi; pod_view and node_fit are pure readers of pods and nodes. The pure
translations between API JSON and the allocator (driver/claim_requests.py, driver/allocation_status.py,
driver/claim_model.py, driver/published_gpus.py) live in driver/ because `vgpu-dra plan` shares them;
driver/object_allocation.py runs the whole decision on API JSON.
"""
