"""The endless batch stream a training loop draws from, and where it is in the epochs."""


def batch_stream(dataset, batch_size: int, rng, generator, accelerator):
    """Batches forever, epoch after epoch, this process's share of each: yields (epoch, step within it, batch)."""
    epoch = 0
    while True:
        for epoch_step, batch in enumerate(dataset.epoch(batch_size, rng, generator, accelerator.process_index,
                                                         accelerator.num_processes)):
            yield epoch, epoch_step, batch
        epoch += 1


def optimizer_steps_per_epoch(dataset, batch_size: int, grad_accum: int, processes: int) -> int:
    """Optimizer steps per pass over the dataset; epochs count from the overall step, as the reference does."""
    return max(1, dataset.batches_per_epoch(batch_size) // (grad_accum * processes))
