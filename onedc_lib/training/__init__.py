"""Training: one loop (loop.py: accelerate DDP, mixed precision, AdamW with warm-up, gradient clipping, atomic
checkpoints with bit-exact resume, tqdm, CSV / TensorBoard logs, sample images) and the stages that use it.

    python -m onedc_lib.training.stage0 --preset nano --out runs/s0                # nano VAE, tokenizer, teacher UNet
    python -m onedc_lib.training.stage1 --preset nano --out runs/s1 --stage0 runs/s0
    python -m onedc_lib.training.stage2 --preset nano --out runs/s2 --stage0 runs/s0 --init runs/s1/model

Every stage takes --steps N --ckpt-every K --seed S --resume auto --data DIR --set key=value. Several processes:
`accelerate launch --num_processes N -m onedc_lib.training.stage1 ...` on GPUs; on a machine without GPUs
`accelerate launch --multi_gpu --num_processes N ...` or `torchrun --nproc_per_node N -m ...` (gloo; accelerate's
`--cpu` launcher starts several processes only through MPI).
"""
