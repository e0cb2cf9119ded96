"""Benchmarks the encoder engines against tiktoken on a mixed corpus.

    python bench/bench_encoder.py [--mb 4] [--repeat 3]

The corpus is built from text found on any machine: the Python standard
library's sources and text files, generated words from several scripts
(with emoji ZWJ sequences and combining marks), and a few 10,000-character
words.  Speeds are MB of UTF-8 input (encode) or output (decode) per CPU
second of this single-threaded process, so other load on the machine skews
them little; the best of --repeat rounds is kept, each with a cold BPE cache.
"""

import argparse
import os
import random
import sys
import sysconfig
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))

import encoder  # noqa: E402

# (name, list of (first, last) code point ranges) of letters to draw words from.
SCRIPTS = [
    ('Cyrillic', [(0x430, 0x44F)]),
    ('Greek', [(0x3B1, 0x3C9)]),
    ('Arabic', [(0x628, 0x64A)]),
    ('Hebrew', [(0x5D0, 0x5EA)]),
    ('Devanagari', [(0x915, 0x939), (0x93E, 0x94C)]),
    ('Thai', [(0xE01, 0xE2E)]),
    ('Hangul', [(0xAC00, 0xD7A3)]),
    ('Kana', [(0x3041, 0x3096), (0x30A1, 0x30FA)]),
    ('CJK', [(0x4E00, 0x9FFF)]),
]
EMOJI = ['\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466',
         '\U0001F3F3\uFE0F\u200D\U0001F308', '\U0001F44D\U0001F3FD',
         '\U0001F1EB\U0001F1F7', '\u2764\uFE0F', '\U0001F600']
COMBINING = ['e\u0301', 'a\u0308', 'n\u0303', 'o\u0302\u0323']


def stdlib_documents():
    """Yields (path, text) of the standard library's text files and sources."""
    root = sysconfig.get_paths()['stdlib']
    texts, sources = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ('site-packages', '__pycache__'))
        for name in sorted(files):
            if name.endswith(('.txt', '.rst', '.md')):
                texts.append(os.path.join(folder, name))
            elif name.endswith('.py'):
                sources.append(os.path.join(folder, name))
    docs = os.path.join(root, 'pydoc_data', 'topics.py')  # the reference manual's prose
    for path in texts + [docs] + sources:
        with open(path, 'rb') as f:
            yield path, f.read().decode('utf-8', errors='replace')


def generated_documents(rng, n_bytes):
    """Yields pseudo-text in many scripts, with words repeating as in language."""
    out = 0
    while out < n_bytes:
        for name, ranges in SCRIPTS:
            letters = [chr(c) for lo, hi in ranges for c in range(lo, hi + 1)]
            short = name in ('CJK', 'Hangul', 'Kana')
            words = [''.join(rng.choice(letters) for _ in range(rng.randint(1, 3 if short else 9)))
                     for _ in range(3000)]
            weights = [1 / (k + 1) for k in range(len(words))]  # Zipf-like
            picked = rng.choices(words, weights, k=1500)
            parts = []
            for w in picked:
                r = rng.random()
                if r < 0.02:
                    w += rng.choice(EMOJI)
                elif r < 0.04:
                    w = rng.choice(COMBINING) + w
                elif r < 0.10:
                    w += rng.choice(['.', ',', '!', '?', '\n', '\t', '  ', '\r\n'])
                parts.append(w)
            text = ' '.join(parts)
            out += len(text.encode('utf-8'))
            yield name, text
            if out >= n_bytes:
                return


def long_words(rng):
    """Yields a few 10,000-character words (no spaces, so one BPE word each)."""
    yield 'letters', ''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(10_000))
    yield 'digits', ''.join(rng.choice('0123456789') for _ in range(10_000))
    yield 'cyrillic', ''.join(chr(rng.randint(0x430, 0x44F)) for _ in range(10_000))
    yield 'cjk', ''.join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(10_000))
    yield 'punct', ''.join(rng.choice('!#$%&()*+-/<=>?@[]^{|}~') for _ in range(10_000))


def build_corpus(mb, seed=0):
    """Returns ({kind: MB}, documents): about mb MB, 15% of it generated."""
    rng = random.Random(seed)
    target = int(mb * 1e6)
    docs, sizes = [], {}

    def add(kind, text):
        docs.append(text)
        sizes[kind] = sizes.get(kind, 0) + len(text.encode('utf-8')) / 1e6

    for _, text in long_words(rng):
        add('10,000-char words', text)
    for _, text in generated_documents(rng, int(0.15 * target)):
        add('generated scripts', text)
    for path, text in stdlib_documents():
        if sum(sizes.values()) * 1e6 >= target:
            break
        add('stdlib code' if path.endswith('.py') and 'pydoc_data' not in path
            else 'stdlib prose', text)
    return sizes, docs


def local_tiktoken():
    """Returns tiktoken's GPT-2 encoding built from src/vocab (no download)."""
    import json
    with open(os.path.join(encoder.VOCAB_DIR, 'encoder.json'), encoding='utf-8') as f:
        vocab = json.load(f)
    byte_of = {c: b for b, c in encoder.bytes_to_unicode().items()}
    ranks = {bytes(byte_of[c] for c in tok): i for tok, i in vocab.items()
             if tok != encoder.ENDOFTEXT}
    return encoder.tiktoken.Encoding(name='gpt2-bench', pat_str=encoder.PAT,
                                     mergeable_ranks=ranks,
                                     special_tokens={encoder.ENDOFTEXT: vocab[encoder.ENDOFTEXT]})


def timed(fn):
    """Returns (CPU seconds of this process, result) of fn()."""
    t = time.process_time()
    result = fn()
    return time.process_time() - t, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mb', type=float, default=4.0, help='corpus size in MB')
    parser.add_argument('--repeat', type=int, default=5, help='rounds; the best time is kept')
    args = parser.parse_args()

    t = time.perf_counter()
    sizes, docs = build_corpus(args.mb)
    n_bytes = sum(len(d.encode('utf-8')) for d in docs)
    print(f"corpus: {len(docs)} documents, {n_bytes / 1e6:.2f} MB "
          f"(built in {time.perf_counter() - t:.1f}s): "
          + ', '.join(f"{kind} {size:.2f} MB" for kind, size in sizes.items()))

    engines = {'python': encoder.get_default_encoder('python'),
               'default': encoder.get_default_encoder()}
    if encoder.tiktoken is None:
        print("tiktoken is not installed: only the python engine is measured")
        del engines['default']
    else:
        engines['tiktoken'] = local_tiktoken()
    print(f"default engine: {encoder.get_default_encoder().engine}")

    def encode_all(name, enc):
        if name == 'tiktoken':
            return [enc.encode_ordinary(d) for d in docs]
        enc.cache.clear()  # each run starts cold
        return [enc.encode(d) for d in docs]

    # Engines take turns in each round, so a busy machine slows all alike.
    best = {name: [float('inf'), float('inf')] for name in engines}
    ids = {}
    for _ in range(args.repeat):
        for name, enc in engines.items():
            t_enc, ids[name] = timed(lambda: encode_all(name, enc))
            t_dec, texts = timed(lambda: [enc.decode(x) for x in ids[name]])
            if texts != docs:
                print(f"WARNING: {name}: decode(encode(text)) != text")
            best[name] = [min(best[name][0], t_enc), min(best[name][1], t_dec)]
    results = {name: (n_bytes / 1e6 / e, n_bytes / 1e6 / d) for name, (e, d) in best.items()}

    n_tokens = sum(map(len, ids['python']))
    same = all(v == ids['python'] for v in ids.values())
    print(f"identical ids from {', '.join(ids)}: {same} ({n_tokens} tokens)")
    base = results.get('tiktoken')
    print(f"{'engine':10} {'encode MB/s':>12} {'decode MB/s':>12}"
          + (f" {'encode x tiktoken':>18} {'decode x tiktoken':>18}" if base else ''))
    for name, (e, d) in results.items():
        line = f"{name:10} {e:12.2f} {d:12.2f}"
        if base:
            line += f" {e / base[0]:18.2f} {d / base[1]:18.2f}"
        print(line)
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
