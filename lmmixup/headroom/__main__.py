"""python -m lmmixup.headroom model.name_or_path=M data.eval_file=F rows=64 n=8 [out=DIR]
[any train.py override ...]: lmmixup/headroom/run.py says what it reads and writes."""

from lmmixup.headroom.run import main

if __name__ == "__main__":
    main()
