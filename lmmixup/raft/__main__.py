"""python -m lmmixup.raft model.name_or_path=M data.train_file=F prompts=160 n=4 out=DIR
[any train.py override ...]: lmmixup/raft/run.py says what it reads and writes."""

from lmmixup.raft.run import main

if __name__ == "__main__":
    main()
