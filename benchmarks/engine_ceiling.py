"""The pipeline's vLLM stage vs vLLM's own ``LLM.chat`` on the same prompts, in one run.

180 held-out prompts (the industry of a customer described in a sentence, answered as JSON
constrained by a schema), the default model, the same engine settings
(``cpu_vllm_config``'s: max_model_len 1024, a 1 GiB KV cache, enforce_eager), greedy.

- ``LLM.chat``: vLLM in one process on the head's Python (``.venv-ray``), all prompts in one
  call, timed from the call to its return (the engine already started);
- the pipeline: ``RayLLMBatchOperator`` in dag.test on the local head; its vLLM stage's own
  time (Ray Data's stats, ``metrics.stage_seconds``) and the job's ``inference`` phase
  (engine ready -> last row written).

Tokens/s of the stage over tokens/s of ``LLM.chat`` (target >= 0.9), and the output tokens
each produced. ``python benchmarks/engine_ceiling.py`` (part of make bench)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

TARGET = 0.9
PROMPTS = 180
SCHEMA = {
    "type": "object",
    "properties": {"industry": {"type": "string", "enum": ["Law Firm", "Healthcare", "Technology", "Retail",
                                                             "Consulting", "Manufacturing", "Finance", "Other"]},
                   "confidence": {"type": "string", "enum": ["high", "low"]}},
    "required": ["industry", "confidence"], "additionalProperties": False,
}  # fmt: skip
ENGINE = {"max_model_len": 1024, "kv_cache_memory_bytes": 2**30, "enforce_eager": True}
SAMPLING = {"temperature": 0, "max_tokens": 48}
KINDS = ["a law office", "a small clinic", "a software start-up", "a corner shop", "an advisory firm", "a steel mill",
         "a credit union", "a bakery", "a dental practice", "a chip designer", "a logistics broker", "a bank branch"]


def prompts(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        rows.append({"id": i, "text": f"Customer {i}: {kind} in district {i % 17} with {5 + i % 40} staff, client since {2001 + i % 24}."})
    return rows


SYSTEM = "Classify the customer's industry. Answer in JSON."


DIRECT = r'''
import json, sys, time
SYSTEM = %r
def main():
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams
    model, rows, engine, sampling, schema = sys.argv[1], json.loads(open(sys.argv[2]).read()), *map(json.loads, sys.argv[3:6])
    llm = LLM(model=model, **engine)
    params = SamplingParams(**sampling, structured_outputs=StructuredOutputsParams(json=schema))
    conversations = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["text"]}] for r in rows]
    started = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print("RESULT " + json.dumps({"seconds": seconds, "tokens": tokens, "rows": len(outputs)}), flush=True)
if __name__ == "__main__":
    main()
'''


def direct(model: str, rows_path: Path) -> dict:
    script = common.WORK / "engine_ceiling_direct.py"
    script.write_text(DIRECT % SYSTEM)
    with open(common.WORK / "engine-ceiling-direct.log", "w") as log:
        done = subprocess.run([str(common.RAY_PYTHON), str(script), model, str(rows_path), json.dumps(ENGINE),
                               json.dumps(SAMPLING), json.dumps(SCHEMA)], stdout=subprocess.PIPE, stderr=log,
                              text=True, timeout=1800)  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"LLM.chat run failed; see {common.WORK / 'engine-ceiling-direct.log'}")
    return json.loads(line[len("RESULT "):])


def pipeline(rows_path: Path) -> dict:
    import dagrun

    out = common.WORK / "out" / "engine-ceiling"
    shutil.rmtree(out, ignore_errors=True)
    conf = {"input": str(rows_path.with_suffix(".jsonl")), "output": str(out)}
    _, seconds, states, xcoms = dagrun.run(common.ROOT / "benchmarks" / "dags" / "bench_dags.py", "bench_engine_ceiling",
                                           conf, common.WORK / "engine-ceiling-pipeline.log")  # fmt: skip
    if states != {"classify": "success"}:
        raise RuntimeError(f"bench_engine_ceiling ended {states}; see {common.WORK / 'engine-ceiling-pipeline.log'}")
    m = xcoms["classify"][0]["metrics"] if isinstance(xcoms["classify"], list) else xcoms["classify"]["metrics"]
    stage = sum(v for k, v in m["stage_seconds"].items() if "vLLMEngineStage" in k)
    return {"tokens": m["output_tokens"], "stage_seconds": stage, "inference_phase": m["phases"].get("inference", 0.0),
            "rows": m["rows_out"], "errors": m["error_rows"], "phases": m["phases"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    common.dag_environment()
    from airflow_provider_raydatallm.configs import default_model_path

    rows = prompts(args.prompts)
    rows_path = common.WORK / "input" / f"ceiling-{args.prompts}.json"
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    rows_path.write_text(json.dumps(rows))
    rows_path.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = direct(default_model_path(), rows_path)
    print(f"LLM.chat: {a}", flush=True)
    b = pipeline(rows_path)
    print(f"pipeline: {b}", flush=True)
    chat_rate = a["tokens"] / a["seconds"]
    stage_rate = b["tokens"] / b["stage_seconds"] if b["stage_seconds"] else 0.0
    phase_rate = b["tokens"] / b["inference_phase"] if b["inference_phase"] else 0.0
    ratio = stage_rate / chat_rate
    verdict = "pass" if ratio >= TARGET else "miss"
    body = "\n".join([
        f"Command: `python benchmarks/engine_ceiling.py --prompts {args.prompts}` ({time.strftime('%Y-%m-%d')}; "
        f"{common.machine()}). {args.prompts} held-out prompts (a customer's industry as JSON constrained by a schema), "
        "the default model, the same engine settings (max_model_len 1024, 1 GiB KV cache, enforce_eager), greedy, "
        f"max_tokens {SAMPLING['max_tokens']}: vLLM's own `LLM.chat` in one process vs the provider's pipeline "
        "(RayLLMBatchOperator, batch_size 16, one engine), one after the other in one run.",
        "",
        "| way | rows | output tokens | seconds | output tokens/s |",
        "|---|---:|---:|---:|---:|",
        f"| `LLM.chat` (the call, engine started) | {a['rows']} | {a['tokens']:,} | {a['seconds']:.1f} | {chat_rate:.1f} |",
        f"| pipeline: the vLLM stage's own time (Ray Data stats) | {b['rows']} | {b['tokens']:,} | {b['stage_seconds']:.1f} | {stage_rate:.1f} |",
        f"| pipeline: the job's inference phase (engine ready -> last row written) | {b['rows']} | {b['tokens']:,} | {b['inference_phase']:.1f} | {phase_rate:.1f} |",
        "",
        f"Stage tokens/s over `LLM.chat` tokens/s: **{ratio:.2f}** (target >= {TARGET}: {verdict}); over the inference "
        f"phase {phase_rate / chat_rate:.2f}. The two produced {b['tokens']:,} and {a['tokens']:,} output tokens.",
    ])  # fmt: skip
    print(body)
    if not args.no_doc:
        common.update_doc("Engine ceiling: the vLLM stage vs LLM.chat", body)


if __name__ == "__main__":
    main()
