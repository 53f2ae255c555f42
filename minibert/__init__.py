"""minibert: BERT pretraining from scratch, every gradient by hand, on NumPy or CuPy.

    from minibert import BertConfig, BertForPreTraining
    model = BertForPreTraining(BertConfig(vocab_size=1000))
    loss, grads = model.loss_and_grads(batch)

Modules, in the order data flows through them (README.md has the tour):
    corpus -> bpe, bpe_train -> vocab, offsets -> tokenizer, wordpiece -> tokenizer_files
      -> token_cache -> instances, mlm_blocks, instance_view               the training signal
    backend, host, philox, kernels (cpu_kernels, cuda_kernels) -> layers, losses -> encoder
      -> model, classifier, token_classifier, question_answering, multiple_choice;
      gradcheck                                                            the network
    optim, zero -> checkpoint, rundir, atomic -> metrics, distributed, train   pretraining
    task_data, tag_data, tag_metrics, qa_data, qa_metrics, choice_data, default_tasks
      -> seq_task, tag_task, qa_task, choice_task -> finetune, compare     fine-tuning
    inference, hf_state, interop                                           using models
"""
from minibert import backend
from minibert.classifier import BertForSequenceClassification
from minibert.inference import fill_mask, load_pretrained
from minibert.model import BertConfig, BertForPreTraining

__all__ = ["backend", "BertConfig", "BertForPreTraining", "BertForSequenceClassification", "load_pretrained",
           "fill_mask"]
