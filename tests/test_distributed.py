"""How a run opts in to jax.distributed (jaxcomposer/train/distributed.py), without a cluster: 'off'
never imports jax, 'auto' stays one process where JAX detects no cluster, and 'on' without a
coordinator is a clear error. (The 2-process runs are tests/test_multihost.py.)"""

from __future__ import annotations

import textwrap

from conftest import result_of, start_python

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    for k in list(os.environ):  # no cluster environment for jax to detect
        if k.startswith(("SLURM_", "OMPI_", "PMI_", "TPU_", "JAX_COORDINATOR")):
            del os.environ[k]
    from jaxcomposer.train import distributed
    off = distributed.initialize("off")
    jax_after_off = "jax" in sys.modules
    primary_without_jax = distributed.is_primary() and distributed.process_count() == 1
    errors = {}
    for mode in ("sideways", "on"):
        try:
            distributed.initialize(mode)
        except distributed.DistributedSetupError as e:
            errors[mode] = str(e)
    auto = distributed.initialize("auto")
    import jax
    distributed.barrier("alone")  # a no-op for one process
    print("RESULT " + json.dumps({
        "off": off, "jax_after_off": jax_after_off, "primary": primary_without_jax,
        "auto": auto, "processes": jax.process_count(), "errors": errors,
        "agree": distributed.agree(True),
    }))
    """
)


def test_opting_in_and_out_of_the_distributed_runtime():
    result = result_of(start_python(SCRIPT), timeout=120)
    assert result["off"] is False and result["jax_after_off"] is False and result["primary"]
    assert result["auto"] is False and result["processes"] == 1 and result["agree"] is True
    assert "must be one of" in result["errors"]["sideways"]
    assert "needs --coordinator_address" in result["errors"]["on"]
