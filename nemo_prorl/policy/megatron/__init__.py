"""megatron-core policy: CPU compatibility, parallel set-up, GPTModel builder, HF <-> Megatron weights.

Submodules are imported on demand (``import megatron.core`` takes several seconds):

* ``compat``   -- :func:`~nemo_prorl.policy.megatron.compat.apply_cpu_compat`
* ``parallel`` -- :func:`~nemo_prorl.policy.megatron.parallel.init_parallel` and rank helpers
* ``model``    -- :func:`~nemo_prorl.policy.megatron.model.build_gpt_model`
* ``convert``  -- HF <-> Megatron weight mapping and checkpoints
* ``testing``  -- tiny random HF models for tests
"""
