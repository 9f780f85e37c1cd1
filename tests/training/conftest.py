import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models on a shared 2-core machine: intra-op thread barriers cost more than they save (10x measured)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mlp_adapter():
    from lightning_elastic.adapters.registry import register_adapter, unregister_adapter
    from tests._models import TinyMLPAdapter

    adapter = register_adapter(TinyMLPAdapter(), replace=True)
    yield adapter
    unregister_adapter(adapter.name)
