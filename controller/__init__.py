"""The cluster-wide allocation controller (`vgpu-dra controller`): see docs/controller.md.

service (leader election, terms) -> allocation_term (caches, books, queue, workers) over
informer/workqueue/kubeapi; claim_model, node_fit and published_gpus are the pure translations
between API JSON and the allocator in driver/.
"""
