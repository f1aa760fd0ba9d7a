"""The data: find and read the documents, split them, train or load the tokenizer, and pack token blocks (cached on disk, or streamed)."""
