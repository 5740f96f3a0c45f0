"""The gloo process group of a trial's fold workers, kept to the Ray node's own address.

Ray Train's TorchConfig meets through torch's TCPStore, which listens on every interface, and
gloo picks its interface from the host name. Here rank 0's store listens on its Ray node's
address and gloo uses the interface that carries each worker's node address: a local Ray (node
address 127.0.0.1) keeps a trial on loopback, a cluster keeps it on the nodes' own network.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import socket

import psutil
import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


@dataclasses.dataclass
class GlooConfig(TorchConfig):
    """`TorchConfig(backend="gloo")` whose store and transport listen on the node's address only."""
    backend: str = "gloo"

    @property
    def backend_cls(self):
        return _NodeAddressBackend


class _NodeAddressBackend(_TorchBackend):  # Ray's own shutdown of the group is kept
    def on_start(self, worker_group, backend_config: GlooConfig) -> None:
        address, port, listening = worker_group.execute_single(0, _listen)
        size = len(worker_group)
        ray.get([worker_group.execute_single_async(rank, _join, address, port, listening if rank == 0 else None,
                                                   rank, size, backend_config.timeout_s)
                 for rank in range(size)])


def _listen() -> tuple[str, int, int]:
    """A socket listening on this node's Ray address; its descriptor stays open in this process
    for rank 0's store to take over (workers that connect early wait in its backlog)."""
    address = ray.util.get_node_ip_address()
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    sock.bind((address, 0))
    sock.listen(128)
    return address, sock.getsockname()[1], sock.detach()


def _join(address: str, port: int, listening: int | None, rank: int, size: int, timeout_s: float) -> None:
    interface = interface_of(ray.util.get_node_ip_address())
    if interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)  # a user's own choice stands
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(address, port, size, is_master=rank == 0, timeout=timeout, wait_for_workers=False,
                          master_listen_fd=listening)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=timeout)


def interface_of(address: str) -> str | None:
    """The name of the network interface that carries `address`, None if none does."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addresses):
            return name
    return None
