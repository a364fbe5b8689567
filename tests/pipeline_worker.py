"""One process of the multi-process pipeline tests: reads its share of an epoch and writes what it saw.

    python -m tests.pipeline_worker STORE MODE PROCESS_ID NUM_PROCESSES PORT OUT_JSON

MODE ``explicit`` passes process_index/process_count; ``distributed`` joins a real
``jax.distributed`` cluster and lets the pipeline ask ``jax.process_index()``; ``workers`` builds the
batches in spawned Grain worker processes and also checks a resume from the iterator's state.
"""

import json
import sys


def main(store: str, mode: str, process_id: int, num_processes: int, port: int, out: str) -> None:
    import jax

    from bertgpt_jax import data

    if mode == "distributed":
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                                   process_id=process_id)
        share = {}
    else:
        share = {"process_index": process_id, "process_count": num_processes}
    ds = data.gpt_dataset(store, "train", seq_len=8)
    result = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    if mode == "workers":
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags (grain issue 1355)
        it = data.make_iterator(ds, global_batch_size=8, seed=9, num_epochs=1, worker_processes=2, **share)
        first = [next(it)["targets"][:, 0].tolist() for _ in range(3)]
        state = it.get_state()
        rest = [b["targets"][:, 0].tolist() for b in it]
        it.close()
        again = data.make_iterator(ds, global_batch_size=8, seed=9, num_epochs=1, worker_processes=2, **share)
        again.set_state(state)
        result["resumed"] = [b["targets"][:, 0].tolist() for b in again]
        again.close()
        threaded = data.make_iterator(ds, global_batch_size=8, seed=9, num_epochs=1, **share)
        result["threaded"] = [b["targets"][:, 0].tolist() for b in threaded]
        result["batches"] = first + rest
        result["rest"] = rest
    else:
        it = data.make_iterator(ds, global_batch_size=8, seed=9, num_epochs=1, **share)
        result["batches"] = [b["targets"][:, 0].tolist() for b in it]
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    if mode == "distributed":
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
