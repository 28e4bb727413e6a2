"""What only the course needs: the chapter-01 bigram baseline. The core never imports this package."""
