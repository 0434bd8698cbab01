"""
Exercise 13 -- The formatting-token mask of DPO (§4.1.4: "we mask out special formatting
tokens including header and termination tokens ... from both chosen and rejected
responses in the loss"), and the log-probability of a response.

Fill in `dialog_format_mask`, `dpo_logp_mask` and `sequence_logp`, then:
    pytest exercises/ -k dpo_mask
The check compares them with tokenizer.ChatFormat.encode_dialog (format_mask),
dpo.encode_pair_response (logp_mask) and a closed form of the summed log-probabilities.
Statement and hint: exercises/README.md, exercise 13.
"""

import torch


def dialog_format_mask(chat, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """The tokens of a dialog in Llama 3's chat format (§4.1.1) and, for each token, True
    when it is a FORMATTING token: <|begin_of_text|>, every token of every header
    (<|start_header_id|>, the role's tokens, <|end_header_id|>, the "\\n\\n" after it)
    and every <|eot_id|>. Content tokens are False.

    chat: a tokenizer.ChatFormat. Build the dialog yourself from its pieces:
      chat.tokenizer.bos_id, chat.encode_header(message) (header tokens, "\\n\\n" included),
      chat.tokenizer.encode(message["content"].strip(), bos=False, eos=False),
      chat.tokenizer.eot_id. With add_generation_prompt, end with the header of an
      (empty) assistant message: the prompt a model completes.

    Worked example (ids with Meta's tokenizer): [{"role": "user", "content": "Hi"}] ->
        tokens [128000, 128006, 882, 128007, 271, 13347, 128009]
        mask   [True,   True,   True, True,  True, False, True]
    """
    raise NotImplementedError("exercise 13: implement dialog_format_mask in exercises/ex13_dpo_mask.py")


def dpo_logp_mask(chat, prompt: list[dict], response: str,
                  mask_format_tokens: bool = True) -> tuple[list[int], list[bool]]:
    """The tokens of prompt + one assistant response (one dialog, no generation prompt)
    and the mask of the tokens whose log-probabilities DPO sums: the tokens AFTER the
    prompt (the prompt's length is that of the prompt encoded WITH the generation prompt,
    so the assistant header belongs to the prompt) that are not formatting tokens --
    or, with mask_format_tokens=False, every token after the prompt.

    Worked example: prompt [user "Add 2 and 3."], response "5":
        [bos, user header..., "Add 2 and 3.", eot, assistant header..., "5", eot]
        mask: False everywhere except on "5" (and on the last eot as well when
        mask_format_tokens is False).
    """
    raise NotImplementedError("exercise 13: implement dpo_logp_mask in exercises/ex13_dpo_mask.py")


def sequence_logp(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of the masked tokens of each sequence.

    tokens: (N, T) long; logits: (N, T-1, vocab) = model(tokens[:, :-1]) -- the logits at
    position t predict token t+1; mask: (N, T) bool, one entry per TOKEN (as dpo_logp_mask
    gives it). Returns (N,) float32: sum over t >= 1 with mask[:, t] of
    log softmax(logits[:, t-1])[tokens[:, t]]. (Token 0 is never predicted.)

    Worked example: vocab 2, logits all zero -> every log-prob is log 1/2 = -0.6931;
        tokens [[1, 0, 1]], mask [[False, True, True]] -> [-1.3863].
    """
    raise NotImplementedError("exercise 13: implement sequence_logp in exercises/ex13_dpo_mask.py")
