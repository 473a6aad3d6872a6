"""The cluster-wide allocation controller (`vgpu-dra controller`): see docs/controller.md.

service (leader election, terms) -> allocation_term (caches, books, queue, workers) over
informer/workqueue/kubeapi; node_fit is the pure pod-to-node check. The pure translations between
API JSON and the allocator (driver/claim_model.py, driver/published_gpus.py) live in driver/ because
`vgpu-dra plan` shares them.
"""
