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
    for page in os.listdir(os.path.join(ROOT, 'docs')):
        text = open(os.path.join(ROOT, 'docs', page), encoding='utf-8').read()
        for target in re.findall(r'\]\(([\w./-]+\.md)(?:#[\w-]+)?\)', text):
            assert os.path.isfile(os.path.join(ROOT, 'docs', target)), f'{page} links {target}'
