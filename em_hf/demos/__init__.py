"""The ``em-hf demo`` stages, built on the evaluation harness: decoding methods compared on the
arithmetic set (:mod:`em_hf.demos.decoding`) and one-shot EM end to end (:mod:`em_hf.demos.one_shot`)."""
