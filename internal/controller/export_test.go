package controller

// DrawFault exposes the seeded probability draw, so that a test can say which repaves a fault
// with a probability must strike.
var DrawFault = drawFault
