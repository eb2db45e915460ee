"""The policy: the model being trained (megatron-core engine under ``policy.megatron``)."""
