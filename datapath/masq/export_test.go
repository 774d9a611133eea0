package masq

// Intervals is intervals, for the external tests.
var Intervals = intervals
