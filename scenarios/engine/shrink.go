package engine

import "time"

// DefaultShrinkBudget bounds the shrinking of a failed chaos step.
const DefaultShrinkBudget = 4 * time.Minute
