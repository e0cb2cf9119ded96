#!/usr/bin/env python3
"""Sampling speed of sample.py beside Hugging Face transformers (PyTorch, CPU) and CTranslate2, on the same weights.

    pip install torch==2.13.0 transformers ctranslate2    # the peers; not in requirements.txt
    python bench/bench_sampling.py                        # 124M shape, 32-token prompt, 128 new tokens, top_k 40
    python bench/bench_sampling.py --workload controls    # the same with repetition_penalty 1.2, no_repeat_ngram_size 3
    python bench/bench_sampling.py --workload beam        # 4-beam search, batch 1
    python bench/bench_sampling.py --oneoff               # a one-off 40-token job, process start to exit
    python bench/bench_sampling.py --repeats 1 --new 8 --batch_sizes 1 --precision float32   # a smoke run

Random weights of the real 124M shape are written once as an OpenAI checkpoint (what checkpoint.load
reads) and copied, tensor for tensor, into a transformers GPT-2 folder (what from_pretrained reads), with
src/vocab's encoder.json and vocab.bpe beside each (as vocab.json and merges.txt for transformers' GPT-2
tokenizer).  Where ctranslate2 is importable, the transformers folder is converted once into
CTranslate2's (ctranslate2.converters.TransformersConverter, float32: quantization=None).  --peers picks
the peers (default both; one that cannot be imported is dropped with a note).

Each measurement runs in a fresh child process, the sides alternating, with the same thread count
(ours: TensorFlow's intra- and inter-op threads; transformers: torch.set_num_threads; CTranslate2:
intra_threads, inter_threads=1), so that 'time to first token' counts everything from process start:
imports, loading the weights, tracing or compiling, and the prompt pass.  Every side gets the same
prompt token ids (np.random.default_rng(1), [batch, --prompt]; CTranslate2 takes them as token strings,
from its converted vocabulary), draws with top_k and temperature 1, and writes exactly --new tokens per
row: <|endoftext|> is held back (min_new_tokens / min_length = --new; beam search does not stop at it),
and each child asserts the count.  Each side runs in each --precision:
  float32   all three
  bfloat16  ours: checkpoint.load(dtype=...); transformers: model.to(torch.bfloat16); CTranslate2:
            compute_type 'bfloat16', n/a (with a note) where ctranslate2.get_supported_compute_types('cpu')
            lacks it, as on CPUs without bfloat16 instructions
  int8      ours: checkpoint.load(dtype='int8'), n/a where checkpoint.load does not take it;
            transformers: n/a (it has no CPU int8 path for GPT-2's Conv1D layers); CTranslate2:
            compute_type 'int8' (quantized at load from the float32 conversion; on a CPU it runs as
            int8_float32, which 'form' shows)

--workload picks what is drawn:
  topk      (default) top_k sampling
  controls  the same with repetition_penalty 1.2 and no_repeat_ngram_size 3 (ours: stream_sequence's;
            transformers' generate's; CTranslate2's).  Not quite like with like: CTranslate2's
            generate_tokens feeds the prompt at once (include_prompt_in_result=False), and then its
            penalty and n-gram ban see only the new tokens, where ours and transformers' see the prompt
            too (checked with greedy decoding; with include_prompt_in_result=True CTranslate2 agrees
            with transformers, but feeds the prompt one token per step).  The work per step is alike.
  beam      4-beam search, batch 1 only, --new tokens, length_penalty 1, early_stopping False, no stop
            at <|endoftext|> (ours: sample.beam_search, which runs eagerly, so --ours forms do not
            apply; transformers: generate(num_beams=4, do_sample=False); CTranslate2:
            generate_batch(beam_size=4)); none of them streams, so first token, decode tok/s and the
            floor are n/a, and tok/s is --new over the whole warm call

Reported per batch size (n/a where a side lacks the precision or the workload has no such figure):
  first token  seconds from process start to the first new token (cold)
  tok/s        new tokens per second of a second, warm call (prompt pass included)
  decode tok/s new tokens per second after the first one, in that warm call.  CTranslate2's
               generate_tokens streams at every batch size, one result per row and step: a step's
               time is when its last row's token arrives, as ours yields a column
  of floor     decode tok/s as a fraction of the matmul floor's tokens per second: the step's matmuls
               alone (bench_kernels.floor: best of a plain graph and XLA, both weight layouts), timed in
               a child process of its own for each batch size and precision; n/a for a precision that
               bench_kernels.DTYPES lacks (int8) and for beam search
  cold total s seconds from process start to the last token of the first call: what a one-off run
               costs, compile included (XLA's compiled steps are kept in a compile cache that the
               run's processes share, files.use_compile_cache, so only the first process compiles)
  peak GiB     the child process's peak resident memory (VmHWM)
  form         ours: the step's form that ran, the kernel trial's choice (sample.step_form) or one
               forced with --ours (graph, xla, xla+copies: GPT2_XLA / GPT2_TRANSPOSED_COPIES);
               CTranslate2: the compute type it ran
Ratios compare like with like: ours in precision p / each peer in p (where it has p), and ours /
CTranslate2 in float32 and in int8 (its fastest forms on a CPU).  Measure on a quiet machine: the
peers' OpenMP threads suffer far more than ours from other load (CTranslate2 at 2 threads on 2 busy
cores once decoded 30x slower than on idle ones).

--oneoff times a one-off job instead, end to end: each run a fresh process, start to exit, median of
--repeats, at batch 1 with --top_k, --seed 0 and the fixed 41-token English prompt ONEOFF_PROMPT,
ONEOFF_LENGTH (40) new tokens.  Ours is the command a user types:
    python src/interactive_conditional_samples.py --model_name 124M --models_dir FOLDER/ours
        --prompt PROMPT --length 40 --top_k K --seed 0 --precision P
(threads: TF_NUM_INTRAOP_THREADS and TF_NUM_INTEROP_THREADS); each peer's is a child mode of this
script that loads the model and transformers' GPT2TokenizerFast from the transformers folder,
tokenizes the prompt, draws 40 tokens (transformers: generate; CTranslate2: generate_batch) and prints
the decoded text.  The machine is warm: every job runs once untimed first, so the OS page cache holds
the weights and our XLA compile cache the steps; ours runs once more untimed with --json_out, to check
that it wrote 40 tokens (the peers' children assert it themselves).
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, '..', 'src')
sys.path.insert(0, SRC)

PEERS = ('transformers', 'ctranslate2')
MODULES = {'transformers': ('torch', 'transformers'), 'ctranslate2': ('ctranslate2', 'torch', 'transformers')}
PRECISIONS = ('float32', 'bfloat16', 'int8')
WORKLOADS = ('topk', 'controls', 'beam')
CONTROLS = dict(repetition_penalty=1.2, no_repeat_ngram_size=3)   # --workload controls, on every side
BEAMS = 4                                                          # --workload beam
ONEOFF_PROMPT = ('The old lighthouse keeper climbed the narrow stairs every evening at dusk, lit the great lamp '
                 'that warned the fishing boats away from the rocks, and then sat by the window to write in his '
                 'journal until dawn.')
ONEOFF_LENGTH = 40


def prepare(folder, seed, ctranslate2=False):
    """An OpenAI-layout 124M checkpoint in folder/ours/124M, the same weights in folder/peer (transformers),
    each with the vocabulary; with ctranslate2, folder/peer converted into folder/ct2."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import numpy as np
    import model
    import checkpoint
    h = model.default_hparams()
    params = checkpoint.init_params(h, seed=seed)
    ours = os.path.join(folder, 'ours', '124M')
    checkpoint.save(ours, h, params)
    from safetensors.numpy import save_file
    p = {k: v.numpy() for k, v in params.items()}
    hf = {'transformer.wte.weight': p['model/wte'], 'transformer.wpe.weight': p['model/wpe'],
          'transformer.ln_f.weight': p['model/ln_f/g'], 'transformer.ln_f.bias': p['model/ln_f/b']}
    for i in range(h.n_layer):
        for ours_name, theirs in [('ln_1/g', 'ln_1.weight'), ('ln_1/b', 'ln_1.bias'), ('ln_2/g', 'ln_2.weight'),
                                  ('ln_2/b', 'ln_2.bias'), ('attn/c_attn/w', 'attn.c_attn.weight'),
                                  ('attn/c_attn/b', 'attn.c_attn.bias'), ('attn/c_proj/w', 'attn.c_proj.weight'),
                                  ('attn/c_proj/b', 'attn.c_proj.bias'), ('mlp/c_fc/w', 'mlp.c_fc.weight'),
                                  ('mlp/c_fc/b', 'mlp.c_fc.bias'), ('mlp/c_proj/w', 'mlp.c_proj.weight'),
                                  ('mlp/c_proj/b', 'mlp.c_proj.bias')]:
            v = p[f'model/h{i}/{ours_name}']
            hf[f'transformer.h.{i}.{theirs}'] = np.ascontiguousarray(v[0] if v.ndim == 3 else v)
    peer = os.path.join(folder, 'peer')
    os.makedirs(peer, exist_ok=True)
    save_file(hf, os.path.join(peer, 'model.safetensors'), metadata={'format': 'pt'})
    config = dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], vocab_size=h.n_vocab,
                  n_positions=h.n_ctx, n_embd=h.n_embd, n_layer=h.n_layer, n_head=h.n_head,
                  activation_function='gelu_new', layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                  bos_token_id=50256, eos_token_id=50256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with open(os.path.join(peer, 'config.json'), 'w') as f:
        json.dump(config, f)
    # The vocabulary: our sampling script reads it from the model folder; transformers' GPT-2 tokenizer
    # (and so CTranslate2's converter, which writes it into its folder) from vocab.json and merges.txt.
    vocab = os.path.join(SRC, 'vocab')
    for name, theirs in (('encoder.json', 'vocab.json'), ('vocab.bpe', 'merges.txt')):
        shutil.copyfile(os.path.join(vocab, name), os.path.join(ours, name))
        shutil.copyfile(os.path.join(vocab, name), os.path.join(peer, theirs))
    if ctranslate2:
        import ctranslate2 as ct2
        ct2.converters.TransformersConverter(peer).convert(os.path.join(folder, 'ct2'), quantization=None)


class NotSupported(Exception):
    """A side that lacks a precision: its row is n/a, with this as the reason."""


def run_ours(folder, batch, prompt, new, top_k, threads, precision, workload):
    import files
    files.use_compile_cache()   # as the sampling scripts do: before TensorFlow starts
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import checkpoint
    import sample
    path = os.path.join(folder, 'ours', '124M')
    if precision == 'int8':
        try:
            hparams, params = checkpoint.load(path, dtype='int8')
        except (ValueError, TypeError) as e:   # model.ModelError is a ValueError
            raise NotSupported(f'not supported: {str(e).splitlines()[0]}') from None
    else:
        hparams, params = checkpoint.load(path, dtype=precision)
    context = np.random.default_rng(1).integers(0, hparams.n_vocab, size=(batch, prompt))
    result = {}
    for call in ('cold', 'warm'):
        t0, stamps = time.time(), []
        if workload == 'beam':
            (tokens, _), = sample.beam_search(hparams=hparams, params=params, context=[context[0]], length=new,
                                              num_beams=BEAMS, length_penalty=1.0, early_stopping=False,
                                              stop_at_endoftext=False)[0]
            stamps.append(time.time())
            assert len(tokens) == new, len(tokens)
        else:
            for column in sample.stream_sequence(hparams=hparams, params=params, length=new, context=context,
                                                 top_k=top_k, seed=0, **(CONTROLS if workload == 'controls' else {})):
                stamps.append(time.time())
                assert column.shape == (batch,), column.shape
        result[call] = (t0, stamps)
    if workload == 'beam':
        result['form'] = 'eager'   # beam_search runs decode.step eagerly, not the sampler's compiled step
        return result
    chosen = sample.step_form(hparams, params['model/wte'].dtype, batch, top_k=top_k)   # None: forced or the rule
    xla, copies = chosen[0] if chosen else (os.environ.get('GPT2_XLA') != '0', os.environ.get('GPT2_TRANSPOSED_COPIES') == '1')
    result['form'] = ('xla+copies' if copies else 'xla') if xla else 'graph'
    return result


def run_transformers(folder, batch, prompt, new, top_k, threads, precision, workload):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    from transformers import GPT2LMHeadModel
    from transformers.generation.streamers import BaseStreamer
    if precision == 'int8':
        raise NotSupported('no CPU int8 in transformers')
    peer = GPT2LMHeadModel.from_pretrained(os.path.join(folder, 'peer')).eval()
    if precision == 'bfloat16':
        peer = peer.to(torch.bfloat16)

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps, self.calls = [], 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:       # the first put is the prompt
                self.stamps.append(time.time())

        def end(self):
            pass

    ids = torch.tensor(np.random.default_rng(1).integers(0, 50257, size=(batch, prompt)))
    if workload == 'beam':   # generate takes no streamer with beams: the whole call is timed
        ids = ids[:1]
        settings = dict(num_beams=BEAMS, do_sample=False, early_stopping=False, length_penalty=1.0)
    else:
        settings = dict(do_sample=True, top_k=top_k, top_p=1.0, temperature=1.0,
                        **(CONTROLS if workload == 'controls' else {}))
    result = {}
    for call in ('cold', 'warm'):
        torch.manual_seed(0)
        streamer, t0 = Stamps(), time.time()
        with torch.inference_mode():
            out = peer.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                use_cache=True, pad_token_id=50256,
                                streamer=None if workload == 'beam' else streamer, **settings)
        if workload == 'beam':
            streamer.stamps.append(time.time())
        assert out.shape == (len(ids), prompt + new), out.shape
        result[call] = (t0, streamer.stamps)
    return result


def ct2_generator(folder, precision, threads):
    """CTranslate2's Generator on folder/ct2 with compute_type `precision` (int8: int8_float32 where plain
    int8 is refused), or NotSupported where this CPU lacks it."""
    import ctranslate2
    if precision not in ctranslate2.get_supported_compute_types('cpu'):
        raise NotSupported(f'CTranslate2 has no {precision} on this CPU')
    load = lambda compute_type: ctranslate2.Generator(os.path.join(folder, 'ct2'), device='cpu',
                                                      compute_type=compute_type, intra_threads=threads, inter_threads=1)
    try:
        return load(precision)
    except ValueError:
        if precision != 'int8':
            raise
        return load('int8_float32')


def run_ctranslate2(folder, batch, prompt, new, top_k, threads, precision, workload):
    import numpy as np
    import ctranslate2
    generator = ct2_generator(folder, precision, threads)
    with open(os.path.join(folder, 'ct2', 'vocabulary.json'), encoding='utf-8') as f:
        vocabulary = json.load(f)   # id -> token string, as the converter wrote it
    ids = np.random.default_rng(1).integers(0, 50257, size=(batch, prompt))
    tokens = [[vocabulary[i] for i in row] for row in ids]
    # Exactly `new` tokens: <|endoftext|> cannot end a row before min_length, and max_length ends them all
    # (both count new tokens only, with the prompt forwarded at once: include_prompt_in_result=False).
    lengths = dict(max_length=new, min_length=new, include_prompt_in_result=False)
    result = {}
    for call in ('cold', 'warm'):
        ctranslate2.set_random_seed(0)
        t0, stamps = time.time(), []
        if workload == 'beam':   # beam search returns at the end (generate_tokens is greedy or sampling only)
            out = generator.generate_batch(tokens[:1], beam_size=BEAMS, length_penalty=1.0, **lengths)
            stamps.append(time.time())
            assert len(out[0].sequences_ids[0]) == new, len(out[0].sequences_ids[0])
        else:
            # generate_tokens streams every row: one result per row and step, the rows of a step together.
            rows = [0] * batch
            for step in generator.generate_tokens(tokens, sampling_topk=top_k, sampling_temperature=1.0,
                                                  max_length=new, min_length=new,
                                                  **(CONTROLS if workload == 'controls' else {})):
                assert step.step == rows[step.batch_id] and step.token_id != 50256, (step.step, step.token_id)
                rows[step.batch_id] += 1
                if rows.count(step.step + 1) == batch:   # the step's last row
                    stamps.append(time.time())
            assert rows == [new] * batch, rows
        result[call] = (t0, stamps)
    result['form'] = generator.compute_type
    # Freed here, not at exit: a Generator that streamed (a callback) and is still alive when the interpreter
    # exits aborts it about every other time ('terminate called without an active exception', status 134).
    del generator
    return result


def peak_rss():
    """This process's peak resident memory in bytes (Linux), or NaN."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float('nan')


def run_floor(batch, threads, precision):
    """The step's matmul floor for this batch size and precision (bench_kernels.floor), in seconds."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import bench_kernels
    import model
    hparams = model.default_hparams()
    return min(bench_kernels.floor(hparams, bench_kernels.weights(hparams, tf.as_dtype(precision)), batch).values())


def oneoff_transformers(folder, top_k, threads, precision):
    """A one-off job with transformers: load, tokenize, draw ONEOFF_LENGTH tokens, print the text."""
    import torch
    torch.set_num_threads(threads)
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    if precision == 'int8':
        raise NotSupported('no CPU int8 in transformers')
    peer = os.path.join(folder, 'peer')
    tokenizer = GPT2TokenizerFast.from_pretrained(peer)
    lm = GPT2LMHeadModel.from_pretrained(peer, dtype=getattr(torch, precision)).eval()
    ids = torch.tensor([tokenizer.encode(ONEOFF_PROMPT)])
    torch.manual_seed(0)
    with torch.inference_mode():
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=top_k, top_p=1.0,
                          max_new_tokens=ONEOFF_LENGTH, min_new_tokens=ONEOFF_LENGTH, pad_token_id=50256)
    new = out[0, ids.shape[1]:].tolist()
    assert len(new) == ONEOFF_LENGTH, len(new)
    print(tokenizer.decode(new))


def oneoff_ctranslate2(folder, top_k, threads, precision):
    """A one-off job with CTranslate2: load, tokenize (transformers' tokenizer), draw, print the text."""
    import ctranslate2
    generator = ct2_generator(folder, precision, threads)
    from transformers import GPT2TokenizerFast
    tokenizer = GPT2TokenizerFast.from_pretrained(os.path.join(folder, 'peer'))
    ctranslate2.set_random_seed(0)
    result, = generator.generate_batch([tokenizer.convert_ids_to_tokens(tokenizer.encode(ONEOFF_PROMPT))],
                                       sampling_topk=top_k, sampling_temperature=1.0, max_length=ONEOFF_LENGTH,
                                       min_length=ONEOFF_LENGTH, include_prompt_in_result=False)
    new = result.sequences_ids[0]
    assert len(new) == ONEOFF_LENGTH, len(new)
    print(tokenizer.decode(new))


def child(args):
    """One measurement, printed as JSON on the last line of stdout: {'na': why} where the side cannot run it."""
    try:
        if args.child == 'floor':
            print(json.dumps({'floor_s': run_floor(args.batch, args.threads, args.precision)}))
            return
        if args.child.startswith('oneoff-'):
            fn = {'oneoff-transformers': oneoff_transformers, 'oneoff-ctranslate2': oneoff_ctranslate2}[args.child]
            fn(args.folder, args.top_k, args.threads, args.precision)
            print(json.dumps({}))
            return
        fn = {'transformers': run_transformers, 'ctranslate2': run_ctranslate2}.get(args.child, run_ours)
        result = fn(args.folder, args.batch, args.prompt, args.new, args.top_k, args.threads, args.precision,
                    args.workload)
    except NotSupported as e:
        print(json.dumps({'na': str(e)}))
        return
    (t0c, cold), (t0, warm) = result['cold'], result['warm']
    beam = args.workload == 'beam'   # one stamp, at the end of the call
    assert len(cold) == len(warm) == (1 if beam else args.new), (len(cold), len(warm))
    rows = 1 if beam else args.batch
    print(json.dumps({
        'first_token_s': None if beam else cold[0] - args.started,
        'tok_s': rows * args.new / (warm[-1] - t0),
        'decode_tok_s': None if beam else args.batch * (args.new - 1) / (warm[-1] - warm[0]),
        'cold_total_s': cold[-1] - args.started,
        'peak_gib': peak_rss() / 2**30,
        'form': result.get('form', ''),
    }))


def add_workload_flags(ap):
    """The sampling workload every sampling benchmark runs: batch sizes, prompt, new tokens, top_k."""
    ap.add_argument('--batch_sizes', default='1,8', help='comma-separated batch sizes')
    ap.add_argument('--prompt', type=int, default=32, help='prompt tokens')
    ap.add_argument('--new', type=int, default=128, help='new tokens per row')
    ap.add_argument('--top_k', type=int, default=40)


FORMS = {'': {}, 'trial': {}, 'graph': {'GPT2_XLA': '0'},
         'xla': {'GPT2_XLA': '1', 'GPT2_TRANSPOSED_COPIES': '0'},
         'xla+copies': {'GPT2_XLA': '1', 'GPT2_TRANSPOSED_COPIES': '1'}}


def child_env(who, folder):
    """A child's environment: the run's shared compile cache, and our step's form when --ours forces one."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', GPT2_COMPILE_CACHE=os.path.join(folder, 'compile-cache'),
                **FORMS[who.partition(':')[2]])


def measure(who, folder, batch, precision, args):
    cmd = [sys.executable, os.path.abspath(__file__), '--child', who, '--folder', folder, '--batch', str(batch),
           '--precision', precision, '--workload', args.workload,
           '--prompt', str(args.prompt), '--new', str(args.new), '--top_k', str(args.top_k),
           '--threads', str(args.threads), '--started', repr(time.time())]
    out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(who, folder))
    if out.returncode:
        sys.exit(f'{who} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def oneoff(who, folder, precision, args, check=False):
    """Seconds of one one-off job, process start to exit, or {'na': why}.  check: ours writes --json_out
    too, and its token count is checked (an untimed run: the record costs a draw with scores)."""
    if who.startswith('ours'):
        cmd = [sys.executable, os.path.join(SRC, 'interactive_conditional_samples.py'), '--model_name', '124M',
               '--models_dir', os.path.join(folder, 'ours'), '--prompt', ONEOFF_PROMPT, '--length',
               str(ONEOFF_LENGTH), '--top_k', str(args.top_k), '--seed', '0', '--precision', precision]
        record = os.path.join(folder, f'oneoff-{precision}.jsonl')
        cmd += ['--json_out', record] if check else []
    else:
        cmd = [sys.executable, os.path.abspath(__file__), '--child', f'oneoff-{who}', '--folder', folder,
               '--precision', precision, '--top_k', str(args.top_k), '--threads', str(args.threads)]
    env = dict(child_env(who, folder), TF_NUM_INTRAOP_THREADS=str(args.threads),
               TF_NUM_INTEROP_THREADS=str(args.threads))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if who.startswith('ours') and precision == 'int8' and out.returncode:
        lines = out.stderr.strip().splitlines() or ['(no message)']
        return {'na': f'not supported: {lines[-1]}'}
    if out.returncode:
        sys.exit(f'one-off {who} {precision} failed:\n{out.stderr[-3000:]}')
    if not who.startswith('ours'):
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        return answer if 'na' in answer else seconds
    if check:
        with open(record, encoding='utf-8') as f:
            samples = [json.loads(line) for line in f]
        assert len(samples) == 1 and len(samples[0]['tokens']) == ONEOFF_LENGTH, [len(s['tokens']) for s in samples]
    return seconds


def cell(value, spec, width, suffix=''):
    return f'{"n/a":>{width}}' if value is None else f'{format(value, spec) + suffix:>{width}}'


def ratio(a, b):
    return None if a is None or b is None else a / b


def baselines(med, peers, p):
    """What ours in precision p is compared with: each peer in p, and CTranslate2 in float32 and int8."""
    keys = [(peer, p) for peer in peers] + [('ctranslate2', q) for q in ('float32', 'int8') if q != p]
    return [k for k in keys if k in med and 'na' not in med[k]]


def median(rs):
    """The median of each figure over the child processes (n/a stays n/a), and the forms that ran."""
    if 'na' in rs[0]:
        return rs[0]
    return {k: '/'.join(sorted({r[k] for r in rs})) if k == 'form' else
            None if any(r[k] is None for r in rs) else statistics.median(r[k] for r in rs) for k in rs[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_flags(ap)
    ap.add_argument('--repeats', type=int, default=5, help='child processes per (side, batch size); median kept')
    ap.add_argument('--threads', type=int, default=os.cpu_count(), help='threads for every side')
    ap.add_argument('--precision', default='float32,bfloat16,int8',
                    help='comma-separated weight precisions (float32, bfloat16, int8), each for every side that has it')
    ap.add_argument('--ours', default='trial',
                    help='comma-separated forms of our step: trial (the kernel trial chooses), graph, xla, xla+copies')
    ap.add_argument('--peers', default=','.join(PEERS), help='comma-separated peers: transformers, ctranslate2')
    ap.add_argument('--workload', default='topk', choices=WORKLOADS,
                    help='topk sampling, the same with controls (repetition penalty, n-gram ban), or 4-beam search')
    ap.add_argument('--oneoff', action='store_true', help=f'time a one-off {ONEOFF_LENGTH}-token job per side instead')
    ap.add_argument('--json', help='also write the results here')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--folder', help=argparse.SUPPRESS)
    ap.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--started', type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    forms = args.ours.split(',')
    if not forms or any(f not in FORMS or not f for f in forms):
        sys.exit(f'--ours: a comma-separated list of trial, graph, xla, xla+copies; got {args.ours!r}')
    precisions = args.precision.split(',')
    if not precisions or any(p not in PRECISIONS for p in precisions):
        sys.exit(f'--precision: a comma-separated list of {", ".join(PRECISIONS)}, got {args.precision!r}')
    peers = args.peers.split(',') if args.peers else []
    if any(p not in PEERS for p in peers):
        sys.exit(f'--peers: a comma-separated list of {", ".join(PEERS)}, got {args.peers!r}')
    notes = []
    for peer in list(peers):
        missing = [m for m in MODULES[peer] if importlib.util.find_spec(m) is None]
        if missing:
            peers.remove(peer)
            notes.append(f'{peer} left out: {", ".join(missing)} cannot be imported (pip install {" ".join(missing)})')
    batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
    if args.oneoff and args.workload != 'topk':
        sys.exit('--oneoff times the top-k job of interactive_conditional_samples.py; leave --workload out')
    if args.workload == 'beam':
        if batch_sizes != [1]:
            notes.append('beam search runs at batch 1 only: --batch_sizes ignored')
        if forms != ['trial']:
            notes.append('beam search runs eagerly (sample.beam_search): --ours forms do not apply')
        batch_sizes, forms = [1], ['trial']
    for note in notes:
        print(f'note: {note}')
    import bench_kernels

    with tempfile.TemporaryDirectory() as folder:
        prep = subprocess.run([sys.executable, '-c', f'import sys; sys.path.insert(0, {HERE!r}); '
                               f'import bench_sampling as b; b.prepare({folder!r}, 0, {"ctranslate2" in peers})'],
                              capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        if prep.returncode:
            sys.exit(f'preparing the weights failed:\n{prep.stderr[-3000:]}')
        sides = [f'ours:{f}' for f in forms] + peers
        if args.oneoff:
            return report_oneoff(folder, sides, peers, precisions, args, bench_kernels)
        rows = []
        for batch in batch_sizes:
            runs = {(who, p): [] for p in precisions for who in sides}
            for _ in range(args.repeats):
                for (who, p), rs in runs.items():
                    if not rs or 'na' not in rs[0]:   # a side that lacks p says so once
                        rs.append(measure(who, folder, batch, p, args))
            med = {key: median(rs) for key, rs in runs.items()}
            floors = {p: measure('floor', folder, batch, p, args)['floor_s']
                      if p in bench_kernels.DTYPES and args.workload != 'beam' else None for p in precisions}
            rows.append((batch, med, floors))

    print(f'CPU: {bench_kernels.cpu_model()}')
    workload = {'topk': f'top_k {args.top_k}',
                'controls': f'top_k {args.top_k}, repetition_penalty 1.2, no_repeat_ngram_size 3',
                'beam': f'{BEAMS}-beam search'}[args.workload]
    print(f'GPT-2 124M shape, {args.threads} threads, prompt {args.prompt}, {args.new} new tokens, '
          f'{workload}, median of {args.repeats} processes each')
    print(f'{"batch":>5} {"":>16} {"precision":>9} {"first token s":>14} {"tok/s":>8} {"decode tok/s":>13} '
          f'{"of floor":>9} {"cold total s":>13} {"peak GiB":>9}  form')
    for batch, med, floors in rows:
        print(f'{batch:>5} {"floor":>16} ' + ', '.join(
            f'{p} n/a' if s is None else f'{p} {s * 1e3:.1f} ms/step = {batch / s:.1f} tok/s' for p, s in floors.items()))
        for (who, p), m in med.items():
            if 'na' in m:
                print(f'{batch:>5} {who:>16} {p:>9}  n/a ({m["na"]})')
                continue
            of_floor = None if floors[p] is None else ratio(m['decode_tok_s'], batch / floors[p])
            print(f'{batch:>5} {who:>16} {p:>9} {cell(m["first_token_s"], ".2f", 14)} {cell(m["tok_s"], ".1f", 8)} '
                  f'{cell(m["decode_tok_s"], ".1f", 13)} {cell(of_floor, ".0%", 9)} '
                  f'{cell(m["cold_total_s"], ".1f", 13)} {m["peak_gib"]:>9.2f}  {m["form"]}')
        for f in forms:
            for p in precisions:
                o = med[f'ours:{f}', p]
                if 'na' in o:
                    continue
                for peer, q in baselines(med, peers, p):
                    b = med[peer, q]
                    print(f'{batch:>5} {"ratio " + f:>16} {p:>9} '
                          f'{cell(ratio(o["first_token_s"], b["first_token_s"]), ".2f", 14, "x")} '
                          f'{cell(ratio(o["tok_s"], b["tok_s"]), ".2f", 8, "x")} '
                          f'{cell(ratio(o["decode_tok_s"], b["decode_tok_s"]), ".2f", 13, "x")} {"":>9} '
                          f'{cell(ratio(o["cold_total_s"], b["cold_total_s"]), ".2f", 13, "x")} '
                          f'{cell(ratio(o["peak_gib"], b["peak_gib"]), ".2f", 9, "x")}  (ours in {p} / {peer} in {q})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([{'batch': b, 'workload': args.workload, 'floor_s': fl,
                        **{f'{w}_{p}': m for (w, p), m in med.items()}} for b, med, fl in rows], f, indent=2)


def report_oneoff(folder, sides, peers, precisions, args, bench_kernels):
    """--oneoff: every job once untimed (warm caches; ours checked), then --repeats timed runs, alternating."""
    runs = {}
    for p in precisions:
        for who in sides:
            warm = oneoff(who, folder, p, args)
            if who.startswith('ours') and not isinstance(warm, dict):
                oneoff(who, folder, p, args, check=True)
            runs[who, p] = [warm] if isinstance(warm, dict) else []
    for _ in range(args.repeats):
        for (who, p), rs in runs.items():
            if not rs or not isinstance(rs[0], dict):
                rs.append(oneoff(who, folder, p, args))
    med = {key: rs[0] if isinstance(rs[0], dict) else {'wall_s': statistics.median(rs)} for key, rs in runs.items()}
    print(f'CPU: {bench_kernels.cpu_model()}')
    import encoder
    prompt = len(encoder.get_encoder('124M', os.path.join(folder, 'ours')).encode(ONEOFF_PROMPT))
    print(f'One-off job: GPT-2 124M shape, {args.threads} threads, a {prompt}-token prompt, '
          f'{ONEOFF_LENGTH} new tokens, top_k {args.top_k}, seed 0; seconds from process start to exit, median of '
          f'{args.repeats}, after one untimed run each (page cache and compile cache warm)')
    print(f'{"":>16} {"precision":>9} {"wall s":>8}')
    for (who, p), m in med.items():
        print(f'{who:>16} {p:>9} ' + (f'{m["wall_s"]:>8.2f}' if 'na' not in m else f' n/a ({m["na"]})'))
    for who in sides:
        if not who.startswith('ours'):
            continue
        for p in precisions:
            if 'na' in med[who, p]:
                continue
            for peer, q in baselines(med, peers, p):
                print(f'{"ratio " + who.partition(":")[2]:>16} {p:>9} '
                      f'{med[who, p]["wall_s"] / med[peer, q]["wall_s"]:>7.2f}x  (ours in {p} / {peer} in {q})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'oneoff': {f'{w}_{p}': m for (w, p), m in med.items()}}, f, indent=2)


if __name__ == '__main__':
    main()
