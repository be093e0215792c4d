"""The plain joint loss: backpropagate the sum of the task losses."""
from minbert.combiners import COMBINERS, Combiner


@COMBINERS.register
class SumCombiner(Combiner):
    name = "sum"

    def backward(self, losses, model):
        sum(losses.values()).backward()
