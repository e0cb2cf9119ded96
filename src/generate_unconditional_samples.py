#!/usr/bin/env python3
"""Print unconditional GPT-2 samples: text that starts from <|endoftext|>, with no prompt."""
import cli
import sample
from interactive_conditional_samples import check_flags, load_model, print_header


def sample_model(model_name='124M', seed=None, nsamples=0, batch_size=1, length=None,
                 temperature=1, top_k=0, top_p=1, models_dir='models'):
    """Print unconditional samples, starting from <|endoftext|>.

    Args:
      model_name: which model to use, a folder inside models_dir (117M and 345M find 124M and 355M).
      seed: integer seed for the random number generators; fix it to reproduce results.
      nsamples: number of samples to return; 0 continues to generate samples indefinitely.
      batch_size: number of samples drawn in parallel (only affects speed/memory).
      length: number of tokens in generated text; if None (default), the whole context.
      temperature: float controlling randomness in the Boltzmann distribution. Lower temperature
        gives less random completions; as it approaches zero the model becomes deterministic and
        repetitive (0 is greedy). Higher temperature gives more random completions.
      top_k: integer controlling diversity. 1 means only 1 word is considered for each step
        (token), resulting in deterministic completions, while 40 means 40 words are considered at
        each step. 0 (default) is a special setting meaning no restrictions. 40 generally is a good value.
      top_p: float in (0, 1]: nucleus sampling keeps the smallest set of most likely tokens whose
        probability adds up to top_p. 1 (default) turns it off.
      models_dir: path to the parent folder containing model subfolders (i.e. contains the
        <model_name> folder).
    """
    nsamples = cli.integer('nsamples', nsamples, minimum=0)
    batch_size, seed, temperature, top_k, top_p = check_flags(batch_size, seed, temperature, top_k, top_p)
    # By default the whole context: the start token takes the first position.
    enc, hparams, params, length = load_model(model_name, models_dir, length, lambda h: h.n_ctx - 1)
    seeds = sample.seed_stream(seed)

    generated = 0
    while nsamples == 0 or generated < nsamples:
        rows = batch_size if nsamples == 0 else min(batch_size, nsamples - generated)
        out = sample.sample_sequence(hparams=hparams, params=params, length=length,
                                     start_token=enc.eot_token, batch_size=rows, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=next(seeds)).numpy()
        for row in out:
            generated += 1
            print_header(generated)
            print(enc.decode(row[1:].tolist()), flush=True)


if __name__ == '__main__':
    cli.run(sample_model)
