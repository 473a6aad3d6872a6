from tests.fakes.apiserver.fixtures import fake_apiserver, kube_client, kubeconfig_path  # noqa: F401
