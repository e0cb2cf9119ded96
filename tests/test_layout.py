"""The project's shape: model.py is maths only, and README links every page of docs/."""
import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
PROJECT_MODULES = {os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, 'src')) if f.endswith('.py')}


def imported_modules(path):
    tree = ast.parse(open(path, encoding='utf-8').read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    return names


def test_model_py_imports_nothing_from_the_project():
    assert imported_modules(os.path.join(ROOT, 'src', 'model.py')) & PROJECT_MODULES == set()
    assert imported_modules(os.path.join(ROOT, 'src', 'model.py')) <= {'os', 'numpy', 'tensorflow'}


@pytest.mark.parametrize('name', ['files.py', 'quiet.py'])
def test_helpers_need_no_tensorflow(name):
    """They run before TensorFlow starts (the compile cache's flags, the stderr filter around its import)."""
    assert 'tensorflow' not in imported_modules(os.path.join(ROOT, 'src', name))


def test_readme_links_every_docs_page_and_every_link_resolves():
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    assert len(readme.splitlines()) <= 200
    links = set(re.findall(r'\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)', readme))
    pages = {f'docs/{f}' for f in os.listdir(os.path.join(ROOT, 'docs')) if f.endswith('.md')}
    assert pages <= links, f'README does not link {sorted(pages - links)}'
    for link in links:
        assert os.path.isfile(os.path.join(ROOT, link)), link


def test_links_between_docs_pages_resolve():
    for page in [f for f in os.listdir(os.path.join(ROOT, 'docs')) if f.endswith('.md')]:
        text = open(os.path.join(ROOT, 'docs', page), encoding='utf-8').read()
        for target in re.findall(r'\]\(([\w./-]+\.md)(?:#[\w-]+)?\)', text):
            assert os.path.isfile(os.path.join(ROOT, 'docs', target)), f'{page} links {target}'


# Where the network is written: only model.py (and the checkpoint schema, checkpoint.param_shapes, which
# names every tensor).  Anything else that embeds positions, names layers, runs blocks or builds masks
# would be a second copy of the network that a fork's change to model.py does not reach.
NETWORK = [
    (r"model/wpe|/wpe'\]", 'names the position table'),
    (r"f'[^']*/h\{", 'builds layer names'),
    (r'\bmodel\.(block|attn|mlp|conv1d|norm|positions_for|attention_mask|multihead_attn)\(', 'calls a part of the network'),
    (r'\b(attention_mask|tf\.linalg\.band_part|np\.tril|tf\.sequence_mask)\(', 'builds an attention mask'),
    (r"'/ln_' in", 'decides which weights stay float32 (model.stays_float32 does)'),
]


def network_lines(text):
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split('#', 1)[0]
        for pattern, what in NETWORK:
            if re.search(pattern, code):
                yield number, what, line.strip()


def test_only_model_py_writes_the_network():
    found = []
    for folder in ('src', 'bench'):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith('.py') or (folder, name) == ('src', 'model.py'):
                continue
            text = open(os.path.join(ROOT, folder, name), encoding='utf-8').read()
            if (folder, name) == ('src', 'checkpoint.py'):   # the schema may name every tensor
                schema = re.search(r'\ndef param_shapes\(.*?\n(?=\S)', text, re.S).group(0)
                text = text.replace(schema, '\n' * schema.count('\n'))
            for n, what, line in network_lines(text):
                # The benchmarks may name tensors (to convert them for a peer, or chain the matmuls of the floor).
                if folder == 'src' or what not in ('names the position table', 'builds layer names'):
                    found.append(f'{folder}/{name}:{n}: {what}: {line}')
    assert not found, '\n'.join(found)


def test_the_layout_check_finds_a_second_copy_of_the_network():
    """The patterns above catch what the sampler, export and training used to write out themselves."""
    old = '''
        x = tf.gather(p['model/wte'], tokens) + tf.gather(p['model/wpe'], positions)
        for layer, past in enumerate(pasts):
            x, present = model.block(x, p, f'model/h{layer}', self.hparams['n_head'], past, mask)
        x = model.norm(x[:, 0], params['model/ln_f/g'], params['model/ln_f/b'])
        p = {k: tf.cast(v, tf.float32 if '/ln_' in k else dtype) for k, v in params.items()}
    '''
    assert {what for _, what, _ in network_lines(old)} == {what for _, what in NETWORK} - {'builds an attention mask'}
    assert list(network_lines('mask = attention_mask(nd, ns)'))
