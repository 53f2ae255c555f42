"""minibert: BERT pretraining from scratch, every gradient by hand, on NumPy or CuPy.

    from minibert import BertConfig, BertForPreTraining
    model = BertForPreTraining(BertConfig(vocab_size=1000))
    loss, grads = model.loss_and_grads(batch)

Modules, in the order data flows through them (README.md has the tour):
    corpus -> bpe, bpe_train -> vocab -> tokenizer, wordpiece -> tokenizer_files -> token_cache
      -> instances                                                         the training signal
    backend, host, philox, kernels (cpu_kernels, cuda_kernels) -> layers, losses -> model, classifier,
      gradcheck                                                            the network
    optim -> checkpoint, rundir, atomic -> metrics, distributed, train, finetune   training
    task_data, compare, inference, interop                                 using models
"""
from minibert import backend
from minibert.classifier import BertForSequenceClassification
from minibert.inference import fill_mask, load_pretrained
from minibert.model import BertConfig, BertForPreTraining

__all__ = ["backend", "BertConfig", "BertForPreTraining", "BertForSequenceClassification", "load_pretrained",
           "fill_mask"]
