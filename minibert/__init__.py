"""minibert: BERT pretraining from scratch, every gradient by hand, on NumPy or CuPy.

    from minibert import BertConfig, BertForPreTraining
    model = BertForPreTraining(BertConfig(vocab_size=1000))
    loss, grads = model.loss_and_grads(batch)

Modules: backend (the NumPy/CuPy switch), layers and losses (forward/backward pairs),
model, classifier, gradcheck, tokenizer, data, optim, checkpoint, train, finetune,
inference, interop.
"""
from minibert import backend
from minibert.classifier import BertForSequenceClassification
from minibert.inference import fill_mask, load_pretrained
from minibert.model import BertConfig, BertForPreTraining

__all__ = ["backend", "BertConfig", "BertForPreTraining", "BertForSequenceClassification", "load_pretrained",
           "fill_mask"]
