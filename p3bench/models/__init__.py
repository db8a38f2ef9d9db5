"""The LightningModule, model and tokenizer factories, and the batch collator."""
