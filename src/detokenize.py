"""Detokenisers that undo word-level benchmarks' tokenisation before GPT-2 scores the text.

The GPT-2 paper (section 3.1) scores WikiText, PTB and One Billion Word "using invertible
de-tokenizers to remove as many of these tokenization / pre-processing artifacts as possible",
so the text looks like the web text the model was trained on.  The rules were never published;
these are written from each dataset's conventions:

    WikiText   role @-@ playing, 8 @,@ 500, 52 @.@ 9, ( a , b ) , " quoted " , Teddy 's, = = Heading = =
    PTB        it 's, do n't, $ N (Mikolov's lowercase version: no other punctuation, N for numbers)
    1BW        Moses-style: he said , " I 'm here . "  /  5 %  /  $ 5

"Invertible" here means what it means in the paper: on text that follows the dataset's own
conventions, the dataset's tokeniser maps the output back to the input, so the probability of the
detokenised text stands for the probability of the original.  They are not bijections on arbitrary
strings (a quote the dataset left unpaired, say, is paired with the wrong neighbour).

Every function maps str -> str and keeps line breaks where they are.
"""
import re

# A clitic the tokeniser split off its word: "it 's" -> "it's", "do n't" -> "don't", "don 't" -> "don't".
_CLITIC = re.compile(r"(?<=[^\s\"'(\[{]) (n't|'(?:s|re|ve|ll|d|m|t))(?=[\s.,;:!?\"')\]}]|$)", re.IGNORECASE)
# The possessive apostrophe of a plural: "the players ' union" -> "the players' union".
_PLURAL_POSSESSIVE = re.compile(r"(?<=s) '(?=[ \t\n]|$)")
# A pair of straight double quotes with spaces inside, on one line: '" Nameless "' -> '"Nameless"'.
_QUOTE_PAIR = re.compile(r'"[ \t]*([^"\n]*?)[ \t]*"')
_OPEN_BRACKET = re.compile(r'([(\[{])[ \t]+')
_CLOSE_BRACKET = re.compile(r'[ \t]+([)\]}])')
# Punctuation that hangs on the word before it, when it ends a token: "lit . Valk" -> "lit. Valk".
_PUNCT = re.compile(r'[ \t]+([.,;:!?%]+)(?=[\s"\')\]}]|$)')
_CURRENCY = re.compile(r'([$#£€¥])[ \t]+(?=\d)')
# Spaces at the start and end of lines (WikiText and PTB lines are " text \n").
_LINE_EDGE = re.compile(r'[ \t]*\n[ \t]*')

# WikiText's escaped separators inside words and numbers: " @-@ " -> "-", " @,@ " -> ",", " @.@ " -> ".".
_WIKI_AT = re.compile(r'[ \t]*@([-,.])@[ \t]*')
# WikiText's spaced heading markers: "= = Career = =" -> "== Career ==" (Wikipedia's own markup).
_WIKI_HEADING = re.compile(r'(?<!\S)=(?:[ \t]=)+(?!\S)')
# Mikolov's PTB writes numbers as N and splits the dollar sign: "$ N" -> "$N".
_PTB_DOLLAR = re.compile(r'\$[ \t]+(?=N\b|\d)')


def _strip_line_edges(text):
    text = _LINE_EDGE.sub('\n', text)
    return re.sub(r'^[ \t]+|[ \t]+$', '', text)


def _moses_like(text):
    """The rules shared by all three datasets: clitics, quotes, brackets, punctuation, currency."""
    text = _CLITIC.sub(r'\1', text)
    text = _PLURAL_POSSESSIVE.sub("'", text)
    text = _QUOTE_PAIR.sub(r'"\1"', text)
    text = _OPEN_BRACKET.sub(r'\1', text)
    text = _CLOSE_BRACKET.sub(r'\1', text)
    text = _PUNCT.sub(r'\1', text)
    return _CURRENCY.sub(r'\1', text)


def none(text):
    """No change: for text that was never tokenised (enwik8, text8, OpenAI's LAMBADA)."""
    return text


def wikitext(text):
    """WikiText (wiki.*.tokens or wiki.*.raw) to Wikipedia-like text."""
    text = _strip_line_edges(text)
    text = _WIKI_AT.sub(r'\1', text)
    text = _WIKI_HEADING.sub(lambda m: m.group(0).replace(' ', '').replace('\t', ''), text)
    return _moses_like(text)


def ptb(text):
    """Mikolov's Penn Treebank (ptb.*.txt) to plainer text; <unk> and N stay (nothing to invert them to)."""
    text = _strip_line_edges(text)
    text = _PTB_DOLLAR.sub('$', text)
    return _moses_like(text)


def one_billion_word(text):
    """One Billion Word Benchmark (Moses-tokenised news sentences) to news-like text."""
    return _moses_like(_strip_line_edges(text))


DETOKENIZERS = {'none': none, 'wikitext': wikitext, 'ptb': ptb, '1bw': one_billion_word}


def get(name):
    """The detokeniser called name (one of DETOKENIZERS), or ValueError naming the choices."""
    try:
        return DETOKENIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown detokenizer {name!r}; choose one of {", ".join(DETOKENIZERS)}') from None
