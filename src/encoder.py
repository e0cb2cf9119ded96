"""Byte pair encoding utilities: GPT-2's tokenizer.

Text is split into pieces by a regex, each piece is turned into UTF-8 bytes,
the bytes are spelled with a reversible byte->unicode alphabet, and the
learned merges (vocab.bpe) are applied in rank order.  The resulting symbols
are looked up in encoder.json.

Two engines give identical ids: a pure-Python one (the readable reference,
always available) and tiktoken, used by default when installed, built from
the same local vocabulary files.
"""

import codecs
import functools
import hashlib
import heapq
import json
import logging
import os

import regex

import files

try:
    import tiktoken
except ImportError:  # the pure-Python engine works without it
    tiktoken = None

log = logging.getLogger(__name__)

ENDOFTEXT = '<|endoftext|>'

# GPT-2's pre-tokeniser.  Case-sensitive: "'S" is not a contraction.
PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab')
VOCAB_SHA256 = {
    'encoder.json': '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783',
    'vocab.bpe': '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5',
}

ENGINES = ('auto', 'python', 'tiktoken')


class EncoderError(ValueError):
    """A vocabulary file is missing, corrupted or does not match its pair."""


@functools.lru_cache()
def bytes_to_unicode():
    """Returns a dict mapping each byte 0..255 to a printable unicode character.

    Bytes that are already printable (and not whitespace) map to themselves;
    the others are moved to code points 256 and up, in byte order.  The table
    is reversible, so any byte string can be spelled as a str of symbols that
    the BPE vocabulary can hold without whitespace or control characters.
    """
    printable = (list(range(ord('!'), ord('~') + 1)) +
                 list(range(ord('¡'), ord('¬') + 1)) +
                 list(range(ord('®'), ord('ÿ') + 1)))
    table = {}
    shifted = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _fix_surrogates(text):
    """Joins surrogate pairs and replaces lone surrogates with U+FFFD."""
    return text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace')


class Encoder:
    """GPT-2's tokenizer: encode(text) -> ids and decode(ids) -> text.

    encoder: dict from token (in the byte->unicode alphabet) to id.
    bpe_merges: list of (left, right) symbol pairs, highest priority first.
    errors: how decode treats invalid UTF-8 (any codecs error handler).
    engine: 'python', 'tiktoken', or 'auto' (tiktoken when installed).
    """

    # Pieces longer than this are not cached (they are rare and large).
    cache_max_piece = 128
    # Pieces cached (0: none); when full, the older half is dropped.
    cache_size = 50_000

    def __init__(self, encoder, bpe_merges, errors='replace', engine='auto'):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        if ENDOFTEXT not in encoder:
            raise ValueError(f"the vocabulary has no {ENDOFTEXT} token")
        self.encoder = dict(encoder)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.errors = errors
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(bpe_merges)}
        self.special_tokens = {ENDOFTEXT: self.encoder[ENDOFTEXT]}
        self.eot_token = self.encoder[ENDOFTEXT]
        self.pat = regex.compile(PAT)
        self.cache = {}
        self._id_bytes = {i: bytes(self.byte_decoder[c] for c in tok)
                          for tok, i in self.encoder.items()}
        self._tiktoken = None
        if engine != 'python':
            problem = self._tiktoken_problem(bpe_merges)
            if problem is None:
                self._tiktoken = tiktoken.Encoding(
                    name='gpt2-local',
                    pat_str=PAT,
                    mergeable_ranks={b: i for i, b in self._id_bytes.items()
                                     if i not in self.special_tokens.values()},
                    special_tokens=self.special_tokens)
            elif engine == 'tiktoken':
                raise ValueError(f"engine='tiktoken' is unavailable: {problem}")
        self.engine = 'tiktoken' if self._tiktoken else 'python'

    def _tiktoken_problem(self, bpe_merges):
        """Why tiktoken cannot reproduce this vocabulary, or None if it can.

        tiktoken ranks a pair by the id of the merged token, so ids must
        increase in merge order and every non-special token must be a byte
        or a merge result.
        """
        if tiktoken is None:
            return 'tiktoken is not installed (pip install tiktoken)'
        last = -1
        for a, b in bpe_merges:
            i = self.encoder.get(a + b)
            if i is None or i <= last:
                return 'token ids do not follow the merge order'
            last = i
        if len(self.encoder) != 256 + len(bpe_merges) + len(self.special_tokens):
            return 'the vocabulary has tokens that no merge produces'
        return None

    @property
    def n_vocab(self):
        return len(self.encoder)

    # --- pure-Python engine ---------------------------------------------

    def bpe(self, symbols):
        """Applies the merges to a str of byte symbols; returns the tokens.

        Adjacent pairs sit in a heap keyed by (rank, position) over a doubly
        linked list of symbols, so each merge costs O(log n) instead of a
        rescan of the word: a 10,000-byte word takes tens of milliseconds.  The lowest
        rank merges first, leftmost first on ties, as in GPT-2 and tiktoken.
        """
        if symbols in self.encoder:
            return [symbols]
        ranks = self.bpe_ranks
        syms = list(symbols)
        n = len(syms)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            rank = ranks.get((syms[i], syms[i + 1]))
            if rank is not None:
                heap.append((rank, i))
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            # Skip entries made stale by earlier merges: a merged-away node
            # has symbol None, and a grown neighbour changes the pair.
            if syms[i] is None or j < 0 or ranks.get((syms[i], syms[j])) != rank:
                continue
            syms[i] += syms[j]
            syms[j] = None
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prv[k] = i
                rank = ranks.get((syms[i], syms[k]))
                if rank is not None:
                    heapq.heappush(heap, (rank, i))
            p = prv[i]
            if p >= 0:
                rank = ranks.get((syms[p], syms[i]))
                if rank is not None:
                    heapq.heappush(heap, (rank, p))
        return [s for s in syms if s is not None]

    def _piece_ids(self, piece):
        """Ids of one pre-tokenised piece (uncached)."""
        # latin-1 turns each byte into the code point of the same value,
        # which str.translate then maps to its symbol.
        symbols = piece.encode('utf-8').decode('latin-1').translate(self.byte_encoder)
        encoder = self.encoder
        return tuple(encoder[tok] for tok in self.bpe(symbols))

    def _encode_python(self, text):
        cache = self.cache
        get = cache.get
        ids = []
        extend = ids.extend
        for piece in self.pat.findall(text):
            piece_ids = get(piece)
            if piece_ids is None:
                piece_ids = self._piece_ids(piece)
                if len(piece) <= self.cache_max_piece and self.cache_size > 0:
                    if len(cache) >= self.cache_size:  # keep the newer half
                        for old in list(cache)[:len(cache) - self.cache_size // 2]:
                            cache.pop(old, None)
                    cache[piece] = piece_ids
            extend(piece_ids)
        return ids

    # --- public API ------------------------------------------------------

    def encode(self, text, allowed_special=()):
        """Returns the token ids of text.

        By default '<|endoftext|>' in text is ordinary text (7 tokens); pass
        allowed_special={'<|endoftext|>'} or 'all' to map it to eot_token.
        Lone surrogates (not encodable as UTF-8) become U+FFFD and surrogate
        pairs become their character, as in tiktoken.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, not {type(text).__name__}")
        special = self._allowed(allowed_special)
        try:
            return self._encode(text, special)
        except UnicodeEncodeError:
            return self._encode(_fix_surrogates(text), special)

    def _allowed(self, allowed_special):
        if allowed_special == 'all':
            return set(self.special_tokens)
        if isinstance(allowed_special, str):
            allowed_special = {allowed_special}
        special = set(allowed_special or ())
        unknown = special - set(self.special_tokens)
        if unknown:
            raise ValueError(f"unknown special tokens {sorted(unknown)}; "
                             f"this vocabulary has {sorted(self.special_tokens)}")
        return special

    def _encode(self, text, special):
        if self._tiktoken is not None:
            if special:
                return self._tiktoken.encode(text, allowed_special=special,
                                             disallowed_special=())
            return self._tiktoken.encode_ordinary(text)
        if not special:
            return self._encode_python(text)
        # Split on the allowed specials first, so no piece straddles one.
        splitter = regex.compile('(' + '|'.join(map(regex.escape, sorted(special))) + ')')
        ids = []
        for n, part in enumerate(splitter.split(text)):
            if n % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_python(part))
        return ids

    def decode_bytes(self, tokens):
        """Returns the UTF-8 bytes that tokens stand for."""
        if self._tiktoken is not None:
            try:
                return self._tiktoken.decode_bytes(tokens)
            except (KeyError, OverflowError, TypeError):
                pass  # a bad id (or not a sequence): the lines below explain
        try:
            return b''.join(map(self._id_bytes.__getitem__, tokens))
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]!r} is not in the vocabulary "
                             f"(valid ids are 0..{self.n_vocab - 1})") from None

    def decode(self, tokens):
        """Returns the text of tokens; eot_token decodes to '<|endoftext|>'."""
        return self.decode_bytes(tokens).decode('utf-8', errors=self.errors)

    def stream_decoder(self):
        """Returns a StreamDecoder for turning tokens into text one by one."""
        return StreamDecoder(self)


class StreamDecoder:
    """Decodes a stream of tokens, holding back incomplete UTF-8 characters.

    push(token) returns the text that became complete; flush() returns the
    rest (invalid or unfinished bytes handled with the encoder's errors).
    Everything pushed and flushed joins to exactly encoder.decode(tokens).
    """

    def __init__(self, encoder):
        self._id_bytes = encoder._id_bytes
        self._n_vocab = encoder.n_vocab
        self._utf8 = codecs.getincrementaldecoder('utf-8')(errors=encoder.errors)

    def push(self, token):
        try:
            data = self._id_bytes[token]
        except (KeyError, TypeError):
            raise ValueError(f"token id {token!r} is not in the vocabulary "
                             f"(valid ids are 0..{self._n_vocab - 1})") from None
        return self._utf8.decode(data)

    def flush(self):
        text = self._utf8.decode(b'', final=True)
        self._utf8.reset()
        return text


# --- loading vocabularies --------------------------------------------------

def _read_vocab(folder, fix, expected_sha256=None):
    """Reads and checks encoder.json and vocab.bpe; returns (encoder, merges).

    Any problem raises EncoderError naming the file and ending with fix.
    """
    paths = {name: os.path.join(folder, name) for name in ('encoder.json', 'vocab.bpe')}
    data = {}
    for name, path in paths.items():
        try:
            with open(path, 'rb') as f:
                data[name] = f.read()
        except OSError as e:
            raise EncoderError(f"cannot read {path} ({e.strerror}); {fix}") from None
        if expected_sha256 and hashlib.sha256(data[name]).hexdigest() != expected_sha256[name]:
            raise EncoderError(f"{path} has been modified (sha256 mismatch); {fix}")

    enc_path, bpe_path = paths['encoder.json'], paths['vocab.bpe']

    def bad(path, problem):
        return EncoderError(f"{path} is corrupted: {problem}; {fix}")

    try:
        encoder = json.loads(data['encoder.json'].decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(enc_path, f"not valid JSON ({e})".replace('\n', ' ')) from None
    if not isinstance(encoder, dict) or not encoder:
        raise bad(enc_path, "expected a JSON object of token: id")
    if not all(isinstance(k, str) and type(v) is int for k, v in encoder.items()):
        raise bad(enc_path, "every entry must map a token string to an integer id")
    if sorted(encoder.values()) != list(range(len(encoder))):
        raise bad(enc_path, f"ids must be 0..{len(encoder) - 1} with no gaps or repeats")
    missing = [c for c in bytes_to_unicode().values() if c not in encoder]
    if missing:
        raise bad(enc_path, f"the single-byte token {missing[0]!r} is missing")
    if ENDOFTEXT not in encoder:
        raise bad(enc_path, f"the {ENDOFTEXT} token is missing")

    try:
        lines = data['vocab.bpe'].decode('utf-8').split('\n')
    except UnicodeDecodeError as e:
        raise bad(bpe_path, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not lines[0].startswith('#version'):
        raise bad(bpe_path, "the first line should be '#version: ...'")
    merges = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        pair = tuple(line.split(' '))
        if len(pair) != 2 or not all(pair):
            raise bad(bpe_path, f"line {lineno} {line!r} is not two symbols")
        if pair[0] not in encoder or pair[1] not in encoder or ''.join(pair) not in encoder:
            raise EncoderError(
                f"{bpe_path} line {lineno} merges {line!r}, which {enc_path} lacks "
                f"(the two files do not match); {fix}")
        merges.append(pair)
    if len(set(merges)) != len(merges):
        raise bad(bpe_path, "a merge appears twice")
    expected = len(encoder) - 256 - 1  # bytes and <|endoftext|> need no merge
    if len(merges) != expected:
        raise EncoderError(
            f"{bpe_path} has {len(merges)} merges but {enc_path} needs {expected} "
            f"(is a file truncated?); {fix}")
    return encoder, merges


def get_encoder(model_name, models_dir='models', errors='replace', engine='auto'):
    """Returns the Encoder of models_dir/model_name.

    When that folder has neither encoder.json nor vocab.bpe, the copy vendored
    in src/vocab is used (all GPT-2 sizes share one vocabulary).
    """
    folder = os.path.join(models_dir, model_name)
    fix = files.fix_hint(folder)
    present = [n for n in ('encoder.json', 'vocab.bpe') if os.path.isfile(os.path.join(folder, n))]
    if not present:
        log.debug("%s has no vocabulary files; using %s", folder, VOCAB_DIR)
        return _vendored_encoder(errors, engine)
    if len(present) == 1:
        other = 'vocab.bpe' if present == ['encoder.json'] else 'encoder.json'
        raise EncoderError(f"{folder} has {present[0]} but no {other}; {fix}")
    encoder, merges = _read_vocab(folder, fix)
    return Encoder(encoder, merges, errors=errors, engine=engine)


def _vendored_encoder(errors='replace', engine='auto'):
    fix = "restore it: git checkout -- src/vocab"
    encoder, merges = _read_vocab(VOCAB_DIR, fix, expected_sha256=VOCAB_SHA256)
    return Encoder(encoder, merges, errors=errors, engine=engine)


@functools.lru_cache()
def get_default_encoder(engine='auto'):
    """Returns the (shared) Encoder of the vendored GPT-2 vocabulary."""
    return _vendored_encoder(engine=engine)
